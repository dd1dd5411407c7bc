"""Continuous learning inside the serving process: the prediction log, the feedback call, the
`/learning` status, and what the server learns about the learner (its candidates and gate
results, read from the store and republished as events; the freshness of each learned version
it swaps in).

The learner itself is another process (`hotserve learn`); the two share only the feedback store
and the model repository.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time

from hotserve.core.manager import Manager
from hotserve.errors import Unavailable
from hotserve.learning import feedback
from hotserve.learning.prediction_log import PredictionLog
from hotserve.learning.store import FeedbackStore, watermark_key
from hotserve.observability import events, metrics
from hotserve.repository import manifest
from hotserve.repository.deltas import DeltaLog
from hotserve.runtimes.base import get_signature

log = logging.getLogger("hotserve.learning")

_TAIL_SECONDS = 1.0  # how often the learner's outcomes are read (a store query per model, in every worker)
_PRUNE_SECONDS = 60.0
_FLUSH_SECONDS = 2.0  # a feedback call waits this long at most for the prediction log to catch up
_FRESHNESS_KEEP = 200
_LEARNER_HEARTBEAT_SECONDS = 5.0  # learner.py writes its state at least this often


class LearningService:
    def __init__(self, manager: Manager, store: FeedbackStore, bus: events.EventBus = events.BUS,
                 queue_capacity: int = 10_000) -> None:
        self.manager = manager
        self.store = store
        self.bus = bus
        self.log = PredictionLog(store, self.rate_of, queue_capacity)
        self._swaps: queue.Queue = queue.Queue()
        self._freshness: dict[str, list[dict]] = {}
        self._cursor: dict[str, str | None] = {}
        self._last_candidate: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="learning", daemon=True)
        self._unsubscribe = None

    def rate_of(self, model: str) -> float:
        mm = self.manager.models.get(model)
        if mm is None:
            return 0.0
        return mm.config.logging_sampling_rate

    def start(self) -> "LearningService":
        for name in self.manager.models:
            self._cursor[name] = self._last_record_id(name)
        self._unsubscribe = self.bus.subscribe(self._on_event)
        self.log.start()
        self._thread.start()
        return self

    guard = None  # learning.guard.DeltaGuard with --parameter_guard_margin

    def stop(self) -> None:
        self._stop.set()
        if self._unsubscribe:
            self._unsubscribe()
        if self.guard is not None:
            self.guard.stop()
        self.log.stop()
        self._thread.join(5)
        self.store.close()

    # -- feedback ----------------------------------------------------------------------------
    def feedback(self, model: str, body: bytes) -> dict:
        """Validate and store one feedback call (blocking: runs in a worker thread). A 200 after
        this returns means the examples are durable."""
        mm = self.manager.get(model)  # 404 for an unknown model
        try:
            lv = self.manager.acquire(model)
        except Unavailable:
            raise Unavailable(f"model {model!r} has no version serving yet; feedback is checked against the served "
                              "signature, try again once it is available") from None
        try:
            sig = get_signature(lv.servable, None)
        finally:
            lv.release()
        try:
            parsed = feedback.parse(body, sig)
        except Exception:
            metrics.FEEDBACK.inc((mm.name, "rejected"))
            raise
        if parsed.labels:
            self.log.flush(_FLUSH_SECONDS)  # a label sent right after its prediction must find it
        result = feedback.store(self.store, model, parsed)
        unknown = len(result.unknown_request_ids)
        metrics.FEEDBACK.inc((model, "joined"), len(parsed.labels) - unknown)
        metrics.FEEDBACK.inc((model, "example"), len(parsed.examples))
        if unknown:
            metrics.FEEDBACK.inc((model, "unknown"), unknown)
        return {"accepted": result.accepted, "unknown_request_ids": result.unknown_request_ids,
                "watermark": result.watermark}

    # -- status ------------------------------------------------------------------------------
    def status(self, model: str) -> dict:
        self.manager.get(model)
        self.log.flush(0.5)  # count the predictions answered before this call (bounded wait)
        now = time.time()
        st = self.store.stats(model, now)
        learner = self.store.learner_state(model) or {}
        fresh = list(self._freshness.get(model, []))
        values = sorted(f["freshness_seconds"] for f in fresh)
        r = self.store.retention
        return {
            "model": model,
            "store": self.store.url,
            "prediction_log": {"sampling_rate": self.rate_of(model), "queue_depth": self.log.depth,
                               "logged_total": st.predictions_logged_total,
                               "dropped_total": int(metrics.PREDICTION_LOG.value((model, "dropped")))},
            "examples": {"stored": st.examples_stored, "joined_total": st.labels_joined_total,
                         "added_total": st.examples_added_total, "pending_predictions": st.predictions_pending,
                         "last_watermark": st.last_watermark},
            "label_window_seconds": r.label_window_seconds,
            "retention": {"max_age_seconds": r.max_age_seconds, "max_count": r.max_count},
            "learner": {
                "watermark": learner.get("watermark"),
                "behind": _behind(st.last_watermark, learner.get("watermark")),
                "parent_version": learner.get("parent_version"),
                "last_candidate": learner.get("last_candidate"),
                "last_seen_unix": learner.get("updated_unix"),
                # The learner writes its state at least every few seconds while it runs.
                "alive": now - learner.get("updated_unix", 0) < 3 * _LEARNER_HEARTBEAT_SECONDS,
            } if learner else None,
            "freshness": {
                "versions": fresh[-20:],
                "count": len(values),
                "p50_seconds": _quantile(values, 0.5),
                "p99_seconds": _quantile(values, 0.99),
                "max_seconds": values[-1] if values else None,
            },
        }

    # -- background: learner records, freshness, retention -------------------------------------
    def _on_event(self, record: events.Record) -> None:
        ev = record.event
        if isinstance(ev, events.Swapped) and ev.default is not None and ev.default != ev.previous_default:
            self._swaps.put((record.time, ev.model, ev.default))
        elif isinstance(ev, events.DeltaApplied) and ev.source == "learner":
            self._swaps.put((record.time, ev.model, ev.version, ev.seq))  # a learner's parameter delta now serves

    def _last_record_id(self, model: str) -> str | None:
        try:
            records = self.store.learner_records(model, None, limit=100_000)
        except Exception:
            return None
        return records[-1][0] if records else None

    def _run(self) -> None:
        next_prune = time.monotonic() + 1.0
        while not self._stop.is_set():
            try:
                swap = self._swaps.get(timeout=_TAIL_SECONDS)
            except queue.Empty:
                swap = None
            try:
                if swap is not None:
                    self._freshness_of(*swap)
                self._tail_learner()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + _PRUNE_SECONDS
                    removed = self.store.prune(time.time())
                    if any(removed.values()):
                        log.info("feedback store retention: removed %s", removed)
            except Exception:
                log.exception("learning service: background step failed; retrying")
                self._stop.wait(1.0)

    def _tail_learner(self) -> None:
        for name in list(self.manager.models):
            if name not in self._cursor:
                self._cursor[name] = self._last_record_id(name)
            for rid, doc in self.store.learner_records(name, self._cursor[name]):
                self._cursor[name] = rid
                self.bus.publish(events.LearnerCandidate(
                    name, version=doc.get("version"), parent=doc.get("parent"), outcome=doc.get("outcome", ""),
                    metric=doc.get("metric", ""), candidate_metrics=doc.get("candidate_metrics") or {},
                    parent_metrics=doc.get("parent_metrics") or {}, max_metric_drop=doc.get("max_metric_drop", 0.0),
                    examples=doc.get("examples", 0), watermark=str(doc.get("watermark") or ""),
                    reason=doc.get("reason", "")))

    def _freshness_of(self, swap_time: float, model: str, version: int, delta_seq: int | None = None) -> None:
        mm = self.manager.models.get(model)
        if mm is None:
            return
        try:
            path = mm.storage.join(mm.base_path, str(version))
            if delta_seq is None:
                doc = manifest.read(path, mm.storage)
            else:  # the learner's delta log entry carries the same lineage as its versions
                doc = DeltaLog(mm.storage, path).entry(delta_seq).doc
        except Exception:
            return
        lineage = doc.get("lineage") or {}
        newest = lineage.get("newest_example_time")
        if lineage.get("source") != "learner" or newest is None:
            return
        entry = {"version": version, "watermark": lineage.get("watermark"),
                 "examples": lineage.get("examples_used"),
                 "freshness_seconds": round(swap_time - newest, 4),
                 "oldest_label_seconds": round(swap_time - lineage.get("oldest_example_time", newest), 4),
                 "served_unix": swap_time}
        kept = self._freshness.setdefault(model, [])
        kept.append(entry)
        del kept[:-_FRESHNESS_KEEP]
        self.bus.publish(events.LearnedVersionServed(model, version=version, watermark=str(entry["watermark"]),
                                                     freshness_seconds=entry["freshness_seconds"],
                                                     oldest_label_seconds=entry["oldest_label_seconds"]))


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[max(0, min(98, round(q * 100) - 1))]


def _behind(last: str | None, learner: str | None) -> bool | None:
    if last is None:
        return False
    return watermark_key(learner) < watermark_key(last)
