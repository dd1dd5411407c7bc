"""Canary analysis: compare the canary's recent requests with stable's and decide.

Rollback is decided as soon as the canary has served `min_requests` and is worse than stable
by more than the configured margin (errors, then p99 latency); promotion only once the whole
window has passed with the canary healthy. Both sides are judged on the same period, so a
burst of bad client input raises both error rates alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from hotserve.core.config import CanaryConfig

Event = tuple[float, bool, float]  # (monotonic time, ok, seconds)


@dataclass(frozen=True)
class Verdict:
    decision: str  # "promote" | "rollback" | "wait"
    reason: str


def _p99(events: list[Event]) -> float | None:
    lat = sorted(e[2] for e in events if e[1])
    if not lat:
        return None
    return lat[min(len(lat) - 1, int(0.99 * len(lat)))]


def analyze(cfg: CanaryConfig, started: float, now: float, stable: list[Event], canary: list[Event]) -> Verdict:
    n = len(canary)
    if n < cfg.min_requests:
        return Verdict("wait", f"canary served {n} of the {cfg.min_requests} requests needed for a decision")
    c_rate = sum(1 for e in canary if not e[1]) / n
    s_rate = (sum(1 for e in stable if not e[1]) / len(stable)) if stable else 0.0
    if c_rate > s_rate + cfg.max_error_rate_increase:
        return Verdict("rollback", f"canary error rate {c_rate:.2%} over {n} requests vs stable {s_rate:.2%} "
                                   f"(at most +{cfg.max_error_rate_increase:.2%} allowed)")
    c_p99, s_p99 = _p99(canary), _p99(stable)
    if len(stable) >= cfg.min_requests and c_p99 is not None and s_p99 is not None and s_p99 > 0:
        if c_p99 > cfg.max_latency_ratio * s_p99:
            return Verdict("rollback", f"canary p99 {c_p99 * 1e3:.2f} ms vs stable {s_p99 * 1e3:.2f} ms "
                                       f"(at most {cfg.max_latency_ratio:g}x allowed)")
    if now - started >= cfg.window_seconds:
        p99 = f", p99 {c_p99 * 1e3:.2f} ms" if c_p99 is not None else ""
        return Verdict("promote", f"canary healthy for {cfg.window_seconds:g}s over {n} requests: "
                                  f"error rate {c_rate:.2%} vs stable {s_rate:.2%}{p99}")
    return Verdict("wait", f"canary healthy so far; deciding after {cfg.window_seconds:g}s")
