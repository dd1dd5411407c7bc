"""Wiring observability to the serving process: the gauges read at scrape time, the per-second
ticker's extras, and one worker's state as the dashboard shows it.

Gauges such as in-flight requests and queue depths are read from the live objects when a
scrape or a tick asks, instead of being maintained on the request path.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from hotserve.core import control
from hotserve.core.manager import Manager
from hotserve.observability import live, metrics
from hotserve.observability.process import rss_of
from hotserve.server.admission import Lanes

# Extra state a feature adds to each model in the dashboard (e.g. learning: freshness, last
# candidate): name -> fn(model manager) -> JSON-able dict or None.
StateProvider = Callable[[Any], dict | None]
STATE_PROVIDERS: dict[str, StateProvider] = {}


def add_state_provider(name: str, fn: StateProvider) -> None:
    STATE_PROVIDERS[name] = fn


def _queue_depth(executor: ThreadPoolExecutor) -> int:
    q = getattr(executor, "_work_queue", None)  # CPython's ThreadPoolExecutor keeps its backlog here
    return q.qsize() if q is not None else 0


def instrument(manager: Manager, lanes: Lanes, worker: str) -> None:
    """Register the scrape-time collectors and the ticker's extras for this process."""

    def collect() -> None:
        inflight: dict[tuple[str, ...], float] = {}
        batches: dict[tuple[str, ...], float] = {}
        for name, mm in list(manager.models.items()):
            for lv in mm.loaded():
                inflight[(name, lv.version_str)] = lv.in_flight
            if mm.batcher is not None:
                batches[(name,)] = mm.batcher.depth()
        metrics.IN_FLIGHT.replace_all(inflight)
        metrics.BATCH_QUEUE.replace_all(batches)
        metrics.REQUEST_QUEUE.replace_all({(name,): _queue_depth(lane.executor) for name, lane in lanes.items()})

    metrics.add_collector(collect)

    def extras() -> dict[str, Any]:
        inflight = {}
        for name, mm in list(manager.models.items()):
            for lv in mm.loaded():
                inflight[live.series_key(name, lv.version_str)] = lv.in_flight
        queued = sum(_queue_depth(lane.executor) for _, lane in lanes.items())
        return {"worker": worker, "rss": rss_of(), "inflight": inflight, "queue": queued}

    live.TICKER.extras = extras


def _version_doc(name: str, st, loaded: dict) -> dict[str, Any]:
    v = str(st.version)
    lv = loaded.get(st.version)
    return {
        "version": st.version,
        "state": st.state.value,
        "error_code": st.error_code.value,
        "error": st.error_message,
        "since": st.since,
        "load_seconds": st.load_seconds,
        "size_bytes": st.size_bytes,
        "memory_bytes": metrics.VERSION_MEMORY.value((name, v, "measured")),
        "gates": st.gates,
        "in_flight": lv.in_flight if lv is not None else None,
        "revision": getattr(lv, "revision", None) if lv is not None else None,
    }


def worker_state(manager: Manager, worker: str) -> dict[str, Any]:
    """One worker's models as the dashboard shows them (a quick read: no lock a load holds)."""
    models = []
    for name, mm in sorted(manager.models.items()):
        loaded = {lv.version: lv for lv in mm.loaded()}
        doc = {
            "name": name,
            "base_path": mm.base_path,
            "routing": control.routing(mm),
            "outage": mm.outage,
            "versions": [_version_doc(name, st, loaded) for st in mm.statuses()],
        }
        for key, fn in STATE_PROVIDERS.items():
            try:
                extra = fn(mm)
            except Exception as exc:  # a feature's panel must not take the page down
                extra = {"error": repr(exc)}
            if extra is not None:
                doc[key] = extra
        models.append(doc)
    return {"type": "state", "worker": worker, "pid": os.getpid(), "time": time.time(), "rss": rss_of(),
            "models": models}
