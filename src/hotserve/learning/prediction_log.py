"""The prediction log: a request-frame observer that queues {id, model, version, time, inputs,
outputs} for models with logging on, and a writer thread that drains the queue into the
feedback store in batches.

The request path only samples, builds one small record (references to the arrays it already
has; encoding happens in the writer) and appends it to a deque: no lock, no wake-up. The
writer wakes every 20 ms (or when a feedback call flushes) and writes everything queued in a
few transactions. When the queue is full the record is dropped and counted
(`hotserve_prediction_log_records_total{outcome="dropped"}`), never the request, and never a wait.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from typing import Any, Callable

from hotserve.learning.store import FeedbackStore, Prediction
from hotserve.observability import metrics

log = logging.getLogger("hotserve.learning")

_LINGER = 0.02  # the writer wakes this often: batches of many records, no wake-up per request
_CHUNK = 2000  # records per store transaction


class PredictionLog:
    def __init__(self, store: FeedbackStore, rate_of: Callable[[str], float], capacity: int = 10_000) -> None:
        self.store = store
        self.rate_of = rate_of  # model -> sampling rate (0: off); read per request, so config reloads apply
        self.capacity = capacity
        # deque.append and len are atomic: the request path takes no lock and wakes nobody.
        self._q: deque[Prediction] = deque()
        self._cv = threading.Condition()
        self._started = 0  # writer batches started / done: flush() waits for one started after it
        self._done = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

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
        if len(self._q) >= self.capacity:
            metrics.PREDICTION_LOG.inc((call.model, "dropped"))
            return
        self._q.append(Prediction(call.request_id, call.model, lv.version, time.time(), call.inputs,
                                  call.outputs or {}))

    def flush(self, timeout: float) -> bool:
        """Wait until every record queued before this call is in the store (a feedback call
        does this first, so a label right after its prediction finds it)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            target = self._started + 1  # a batch that starts after now drains everything queued now
            self._wake.set()
            while self._done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cv.wait(remaining)
        return True

    @property
    def depth(self) -> int:
        return len(self._q)

    def _run(self) -> None:
        while True:
            self._wake.wait(_LINGER)
            self._wake.clear()
            with self._cv:
                self._started += 1
                mine = self._started
            batch = []
            while self._q:
                batch.append(self._q.popleft())
                if len(batch) >= _CHUNK or not self._q:
                    self._write(batch)
                    batch = []
            metrics.PREDICTION_LOG_QUEUE.set((), len(self._q))
            with self._cv:
                self._done = mine
                self._cv.notify_all()
            if self._stopping:
                return

    def _write(self, batch: list[Prediction]) -> None:
        try:
            self.store.log_predictions(batch)
            outcome = "logged"
        except Exception:
            log.exception("prediction log: writing %d record(s) to %s failed; they are lost", len(batch), self.store.url)
            outcome = "failed"
        per_model: dict[str, int] = {}
        for rec in batch:
            per_model[rec.model] = per_model.get(rec.model, 0) + 1
        for model, n in per_model.items():
            metrics.PREDICTION_LOG.inc((model, outcome), n)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (bounded), then end the writer."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
