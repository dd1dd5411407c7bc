"""--inference_threading=auto: whether a model's requests are cheap enough to run on the
event loop instead of hopping to the worker pool."""

from __future__ import annotations

from hotserve.core.router import RouteTable

# A version runs inline only once this many of its recent inferences were measured.
SAMPLES = 50


def inline_ok(table: RouteTable, limit_us: float) -> bool:
    """True when the default version's median of its recent inferences is under limit_us; a
    canary split, a Python model, a version without enough samples or anything slower hops to
    its model's threads."""
    lv = table.default
    if limit_us <= 0 or lv is None or table.canary is not None:
        return False
    if lv.servable.runtime == "python":
        return False  # Python code can block (or hang) without releasing the loop: it keeps its threads
    recent = list(lv.stats.events)[-200:]
    if len(recent) < SAMPLES:
        return False
    times = sorted(e[2] for e in recent)
    return times[len(times) // 2] * 1e6 < limit_us
