"""--inference_threading=auto: whether a model's requests are cheap enough to run on the
event loop instead of hopping to the worker pool."""

from __future__ import annotations

from hotserve.core.loaded import STATS_RECENT
from hotserve.core.router import RouteTable

# A version runs inline only once this many of its recent inferences were measured.
SAMPLES = 50

# A request runs inline only when it is small: what it costs the loop grows with the bytes it
# brings. Measured on the MLP 784-256-256-10 (bench/request_path.py): JSON text costs about
# 7 ns a byte to parse, convert and run; raw tensor bytes (V2's binary extension, gRPC
# tensor_content / raw_input_contents) about 3 ns, for the copy and the larger batch they carry.
# Raw bytes therefore count a quarter, and the cap keeps one inline request at roughly
# 0.25-0.4 ms of loop time: a 32 KiB JSON body (a few rows), or 128 KiB of raw tensors (a
# batch of 32 rows of 784 floats is 100 KB). Larger requests take the model's threads, where
# a long request cannot hold up every other connection of the worker.
MAX_WEIGHT = 32 * 1024
RAW_BYTES_PER_UNIT = 4


def request_weight(text_bytes: int, raw_bytes: int = 0) -> int:
    """A request's size as the inline decision weighs it (compare with MAX_WEIGHT)."""
    return text_bytes + raw_bytes // RAW_BYTES_PER_UNIT


def inline_ok(table: RouteTable, limit_us: float, previous: bool = False) -> bool:
    """True when the default version's median of its recent inferences is under limit_us; a
    canary split, a Python model or anything slower hops to its model's threads. A version
    without enough samples yet keeps `previous`, the model's current decision: a model's first
    version starts in the threads, and a version swapped in behind one that ran inline runs
    inline until its own samples decide at the next analysis (every 0.25 s). Turning inline off
    for a fresh version cost a quarter second of thread hops whenever the analysis came in the
    few milliseconds before it had SAMPLES (2 in 30 swaps in process; worker pools, a swap's
    window p99)."""
    lv = table.default
    if limit_us <= 0 or lv is None or table.canary is not None:
        return False
    if lv.servable.runtime == "python":
        return False  # Python code can block (or hang) without releasing the loop: it keeps its threads
    recent = list(lv.stats.events)[-STATS_RECENT:]  # a version that was in a canary split keeps more until it narrows
    if len(recent) < SAMPLES:
        return previous
    times = sorted(e[2] for e in recent)
    return times[len(times) // 2] * 1e6 < limit_us
