"""The prediction log: a request-frame observer that stages {id, model, version, time, inputs,
outputs} for models with logging on, and a writer thread that hands the staged requests to the
feedback store in batches.

The request path adds references to the request's arrays to the open group of its model version
and layout (same tensor names, shapes and types) under a lock: no copy, no encoding, and a
wake-up only for the first request of a batch. The writer sleeps until then, gathers for 20 ms
(less when a feedback call flushes), takes every group and hands them to the store, which
writes each group's arrays back to back as stacked tensors: what the writer does per request
is nothing. That matters because any Python the writer runs competes
with the request threads for the GIL: an earlier writer that encoded and inserted a record at a
time cost a quarter of the request's own CPU (bench/learning.py). When `capacity` requests are
staged, further ones are dropped and counted
(`hotserve_prediction_log_records_total{outcome="dropped"}`), never the request, and never a wait.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable

from hotserve.learning.store import FeedbackStore, PredictionBatch
from hotserve.observability import metrics

log = logging.getLogger("hotserve.learning")

_LINGER = 0.02  # the writer gathers a batch this long after the first staged request (a flush cuts it short)
_MAX_STAGE_ROWS = 1000  # requests per group: bounds what one store write holds and copies
_MAX_OPEN = 64  # layouts staged at once (variable-shape models); the oldest is sealed beyond


def _layout(tensors: dict) -> tuple:
    return tuple([(name, arr.shape, arr.dtype) for name, arr in tensors.items()])


class _Staging:
    """Requests of one model version and layout (see PredictionBatch): references to their
    arrays, no copy; the store writes each array where the stacked tensor wants it."""

    __slots__ = ("model", "version", "inputs", "outputs", "ids", "times")

    def __init__(self, model: str, version: int, inputs: dict, outputs: dict) -> None:
        self.model, self.version = model, version
        self.inputs: dict[str, list] = {n: [] for n in inputs}
        self.outputs: dict[str, list] = {n: [] for n in outputs}
        self.ids: list[str] = []
        self.times: list[float] = []

    def add(self, request_id: str, t: float, inputs: dict, outputs: dict) -> bool:
        """Keep one request; True when the group is full."""
        for n, a in inputs.items():
            self.inputs[n].append(a)
        for n, a in outputs.items():
            self.outputs[n].append(a)
        self.ids.append(request_id)
        self.times.append(t)
        return len(self.ids) >= _MAX_STAGE_ROWS

    def batch(self) -> PredictionBatch:
        return PredictionBatch(self.model, self.version, self.ids, self.times, self.inputs, self.outputs)


class PredictionLog:
    def __init__(self, store: FeedbackStore, rate_of: Callable[[str], float], capacity: int = 10_000) -> None:
        self.store = store
        self.rate_of = rate_of  # model -> sampling rate (0: off); read per request, so config reloads apply
        self.capacity = capacity
        self._lock = threading.Lock()  # the staging buffers: request threads and the loop add, the writer takes
        self._open: dict[tuple, _Staging] = {}
        self._sealed: list[_Staging] = []
        self._pending = 0  # requests staged (the batch being written aside): what `capacity` bounds
        self._cv = threading.Condition()
        self._started = 0  # writer batches started / done: flush() waits for one started after it
        self._done = 0
        self._wake = threading.Event()  # something is staged, or a flush, or stop
        self._hurry = threading.Event()  # a flush or stop: write now, no lingering
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
        try:
            self._stage(call.model, lv.version, call.request_id, call.inputs, call.outputs or {})
        except Exception:  # never the request's failure: counted, and logged
            metrics.PREDICTION_LOG.inc((call.model, "failed"))
            log.exception("prediction log: staging a request of model %s failed; it is not logged", call.model)

    def _stage(self, model: str, version: int, request_id: str, inputs: dict, outputs: dict) -> None:
        # Arrays already (decoders make them, runtimes return them: python.py's np.asarray);
        # contiguity and byte order are the store's to check, a group at a time (tensors.py).
        key = (model, version, _layout(inputs), _layout(outputs))
        with self._lock:
            if self._pending >= self.capacity:
                metrics.PREDICTION_LOG.inc((model, "dropped"))
                return
            st = self._open.get(key)
            if st is None:
                if len(self._open) >= _MAX_OPEN:
                    self._sealed.append(self._open.pop(next(iter(self._open))))
                st = self._open[key] = _Staging(model, version, inputs, outputs)
            if st.add(request_id, time.time(), inputs, outputs):
                self._sealed.append(self._open.pop(key))
            self._pending += 1
            first = self._pending == 1
        if first:
            self._wake.set()  # the writer sleeps while nothing is staged: once a batch, not a request

    def flush(self, timeout: float) -> bool:
        """Wait until every record queued before this call is in the store (a feedback call
        does this first, so a label right after its prediction finds it)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            target = self._started + 1  # a batch that starts after now drains everything queued now
            self._hurry.set()
            self._wake.set()
            while self._done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cv.wait(remaining)
        return True

    @property
    def depth(self) -> int:
        return self._pending

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if not self._stopping:
                self._hurry.wait(_LINGER)  # gather a batch; a flush or stop cuts it short
            self._hurry.clear()
            with self._cv:
                self._started += 1
                mine = self._started
            with self._lock:
                taken = self._sealed + list(self._open.values())
                self._sealed, self._open = [], {}
                self._pending = 0
            if taken:
                self._write([st.batch() for st in taken])
            metrics.PREDICTION_LOG_QUEUE.set((), self._pending)
            with self._cv:
                self._done = mine
                self._cv.notify_all()
            if self._stopping:
                return

    def _write(self, batches: list[PredictionBatch]) -> None:
        try:
            self.store.log_predictions(batches)
            outcome = "logged"
        except Exception:
            log.exception("prediction log: writing %d request(s) to %s failed; they are lost",
                          sum(map(len, batches)), self.store.url)
            outcome = "failed"
        per_model: dict[str, int] = {}
        for b in batches:
            per_model[b.model] = per_model.get(b.model, 0) + len(b)
        for model, n in per_model.items():
            metrics.PREDICTION_LOG.inc((model, outcome), n)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (bounded), then end the writer."""
        self._stopping = True
        self._hurry.set()
        self._wake.set()
        self._thread.join(timeout)
