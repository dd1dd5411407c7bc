"""Per-second request aggregates for the dashboard's live charts.

The request path appends one float per request to the current second's window of its (model,
version, api, entrypoint), the key the latency histogram already built: the latency in seconds,
negated for an error. Nothing else happens per request: no lock (list.append is atomic), no
timestamp. Once a second a ticker thread swaps in fresh lists and turns the old ones into a tick: per version the request count, errors, p50 and
p99, and a sparse log-scale histogram so ticks from several worker processes merge into
correct percentiles (within 2.5 %). Ticks go to subscribers (the dashboard's live streams)
and into a short history, so a page opened now shows the last minutes at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any, Callable

from hotserve.observability.subscribers import Subscribers

log = logging.getLogger("hotserve.live")

# Log-histogram resolution: bucket i holds latencies in [GROWTH^i, GROWTH^(i+1)) microseconds.
GROWTH = 1.05
_LOG_GROWTH = math.log(GROWTH)
HISTORY_SECONDS = 600

Tick = dict[str, Any]
# (model, version, api, entrypoint) -> latencies of this second (seconds; negative = failed).
# One dict for the process's life (metrics.record_request holds it); the ticker replaces the lists.
WINDOWS: dict[tuple[str, ...], list[float]] = {}
_idle: dict[tuple[str, ...], int] = {}
# A key with no request for this many seconds is dropped (a version long gone).
IDLE_SECONDS = 120


def window(key: tuple[str, ...]) -> list[float]:
    return WINDOWS.setdefault(key, [])


def record(model: str, version: str, ok: bool, seconds: float, api: str = "", entrypoint: str = "") -> None:
    """One finished model request (metrics.record_request does the same inline)."""
    w = WINDOWS.get((model, version, api, entrypoint))
    if w is None:
        w = window((model, version, api, entrypoint))
    w.append(seconds if ok else -seconds)


def _take() -> dict[tuple[str, str], list[float]]:
    """This second's samples by (model, version); every key gets a fresh list."""
    out: dict[tuple[str, str], list[float]] = {}
    for key in list(WINDOWS):
        samples = WINDOWS.get(key)
        if samples:
            WINDOWS[key] = []
            _idle.pop(key, None)
            out.setdefault((key[0], key[1]), []).extend(samples)
        else:
            _idle[key] = _idle.get(key, 0) + 1
            if _idle[key] > IDLE_SECONDS:
                WINDOWS.pop(key, None)
                del _idle[key]
    return out


def bucket_of(us: float) -> int:
    return int(math.log(us) / _LOG_GROWTH) if us >= 1.0 else 0


def bucket_value(i: int) -> float:
    """A bucket's representative latency in microseconds (its geometric middle)."""
    return GROWTH ** (i + 0.5) if i > 0 else 1.0


def percentile_of_histogram(hist: dict[int, int], q: float) -> float | None:
    """The q-quantile (0..1) of a sparse log histogram, in milliseconds."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = q * (total - 1)
    seen = 0
    for i in sorted(hist):
        seen += hist[i]
        if seen > rank:
            return bucket_value(i) / 1000.0
    return bucket_value(max(hist)) / 1000.0


def summarize(samples: list[float]) -> dict[str, Any]:
    """One version's second: n, err, p50/p99 in ms (exact, from the samples), and the histogram
    that lets several workers' seconds merge."""
    lat = sorted(abs(x) for x in samples)
    n = len(lat)
    hist: dict[int, int] = {}
    for x in lat:
        i = bucket_of(x * 1e6)
        hist[i] = hist.get(i, 0) + 1
    return {
        "n": n,
        "err": sum(1 for x in samples if x < 0),
        "p50": lat[int(0.50 * (n - 1))] * 1000.0,
        "p99": lat[int(0.99 * (n - 1))] * 1000.0,
        "h": hist,
    }


def merge_series(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' summaries of one version's second as one."""
    if len(parts) == 1:
        return parts[0]
    hist: dict[int, int] = {}
    for p in parts:
        for i, c in p["h"].items():
            hist[int(i)] = hist.get(int(i), 0) + c
    return {"n": sum(p["n"] for p in parts), "err": sum(p["err"] for p in parts),
            "p50": percentile_of_histogram(hist, 0.50), "p99": percentile_of_histogram(hist, 0.99), "h": hist}


def series_key(model: str, version: str) -> str:
    return f"{model}/{version or '-'}"


class Ticker:
    """Once a second (on wall-clock second boundaries, so workers' ticks line up): swap the
    windows, summarize, keep, and hand the tick to subscribers."""

    def __init__(self, extras: Callable[[], dict[str, Any]] | None = None) -> None:
        self.history: deque[Tick] = deque(maxlen=HISTORY_SECONDS)
        self._subscribers = Subscribers()
        self.extras = extras
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            _take()  # requests recorded before the start belong to no whole second
            self._thread = threading.Thread(target=self._run, name="live-ticker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def subscribe(self, fn: Callable[[Tick], None]) -> Callable[[], None]:
        return self._subscribers.add(fn)

    def _run(self) -> None:
        second = int(time.time())
        while not self._stop.wait(max(0.0, second + 1 - time.time())):
            windows = _take()
            # A request thread that fetched its window just before the swap appends right after
            # it: give those few nanoseconds' worth of stragglers time to land.
            time.sleep(0.02)
            try:
                self._emit(second, windows)
            except Exception:
                log.exception("live ticker failed")
            second = max(second + 1, int(time.time()) - 1)

    def _emit(self, second: int, windows: dict[tuple[str, str], list[float]]) -> None:
        tick: Tick = {"t": second, "series": {series_key(m, v): summarize(s) for (m, v), s in windows.items() if s}}
        if self.extras is not None:
            tick.update(self.extras())
        self.history.append(tick)
        self._subscribers.call(tick, f"live tick {second}")


TICKER = Ticker()
