"""The prediction log: a request-frame observer that queues {id, model, version, time, inputs,
outputs} for models with logging on, and a writer thread that drains the queue into the
feedback store in batches.

The request path only samples, builds one small record (references to the arrays it already
has; encoding happens in the writer) and does a non-blocking put. When the queue is full the
record is dropped and counted (`hotserve_prediction_log_records_total{outcome="dropped"}`),
never the request, and never a wait.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Any, Callable

from hotserve.learning.store import FeedbackStore, Prediction
from hotserve.observability import metrics

log = logging.getLogger("hotserve.learning")

_BATCH = 512


class PredictionLog:
    def __init__(self, store: FeedbackStore, rate_of: Callable[[str], float], capacity: int = 10_000) -> None:
        self.store = store
        self.rate_of = rate_of  # model -> sampling rate (0: off); read per request, so config reloads apply
        self._q: queue.Queue[Prediction | None] = queue.Queue(maxsize=capacity)
        self._cv = threading.Condition()
        self._enqueued = 0
        self._written = 0  # written or given up on: flush() waits for this to catch up
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._stopped = False

    def start(self) -> "PredictionLog":
        self._thread.start()
        return self

    def wants_id(self, model: str) -> bool:
        return self.rate_of(model) > 0.0

    def __call__(self, call: Any, lv: Any, prepared: Any, value: Any) -> None:
        """The frame observer: runs in the request's thread after a successful execute."""
        if call.inputs is None or call.request_id is None:
            return  # not a predict/infer (classify, regress), or logging is off for the model
        rate = self.rate_of(call.model)
        if rate <= 0.0 or (rate < 1.0 and random.random() >= rate):
            return
        rec = Prediction(call.request_id, call.model, lv.version, time.time(), call.inputs, call.outputs or {})
        with self._cv:
            self._enqueued += 1
        try:
            self._q.put_nowait(rec)
        except queue.Full:
            metrics.PREDICTION_LOG.inc((call.model, "dropped"))
            with self._cv:
                self._written += 1
                self._cv.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every record queued before this call is in the store (a feedback call
        does this first, so a label right after its prediction finds it)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            target = self._enqueued
            while self._written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(remaining)
        return True

    @property
    def depth(self) -> int:
        return self._q.qsize()

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    rec = self._q.get_nowait()
                except queue.Empty:
                    break
                if rec is None:
                    self._stopped = True
                    break
                batch.append(rec)
            try:
                self.store.log_predictions(batch)
                outcome = "logged"
            except Exception:
                log.exception("prediction log: writing %d record(s) to %s failed; they are lost", len(batch),
                              self.store.url)
                outcome = "failed"
            per_model: dict[str, int] = {}
            for rec in batch:
                per_model[rec.model] = per_model.get(rec.model, 0) + 1
            for model, n in per_model.items():
                metrics.PREDICTION_LOG.inc((model, outcome), n)
            metrics.PREDICTION_LOG_QUEUE.set((), self._q.qsize())
            with self._cv:
                self._written += len(batch)
                self._cv.notify_all()
            if self._stopped:
                return

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (bounded), then end the writer."""
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
