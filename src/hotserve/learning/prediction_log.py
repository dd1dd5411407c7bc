"""The prediction log: a request-frame observer that queues {id, model, version, time, inputs,
outputs} for models with logging on, and a writer thread that hands them to the feedback store
in batches.

The request path appends one tuple (references to the request's arrays: no copy, no encoding)
to a deque, which is atomic under the GIL: no lock, and a wake-up only for the first request
after the writer went idle. The writer sleeps until then, gathers for 250 ms (less when a
feedback call flushes, or a burst fills a quarter of the queue), takes the queue and groups it
by model version and tensor layout with C-level passes over the records (a zip transposition,
then map and count per column): a batch of one layout, the usual case, costs no Python bytecode
per request. The store writes each group's arrays back to back as stacked tensors. Python
bytecode matters on both sides: under load it runs two to three times slower than measured
alone, and any the writer runs competes with the request threads for the GIL; grouping on the
request path (a layout key, a lock, a dict) kept 0.796 of logging-off throughput where this
design kept 0.836 in the same run (0.91 now, with the later changes; docs/learning.md). When `capacity` requests are queued, further ones are dropped and counted
(`hotserve_prediction_log_records_total{outcome="dropped"}`), never the request, and never a wait.
"""

from __future__ import annotations

import collections
import itertools
import logging
import operator
import random
import threading
import time
from typing import Any, Callable

from hotserve.learning.store import FeedbackStore, PredictionBatch
from hotserve.observability import metrics

log = logging.getLogger("hotserve.learning")

# The writer gathers a batch this long after the first staged request; a flush (a feedback call),
# stop, or a quarter of `capacity` queued cuts it short. Each batch costs a SQLite transaction
# and a round of wake-ups whatever its size, so the longer the batch the less a request pays:
# 20 ms kept 0.90 of logging-off throughput at 1.19x the CPU, 100 ms 0.92 at 1.09x, 300 ms 0.94
# at 1.06x (same run, docs/learning.md).
_LINGER = 0.25
_MAX_BATCH_ROWS = 1000  # requests per batch: bounds what one store write holds


def _layout(tensors: dict) -> tuple:
    return tuple([(name, arr.shape, arr.dtype) for name, arr in tensors.items()])


# A queued record: (model, version, request id, time, inputs, outputs).
_shape = operator.attrgetter("shape")
_dtype = operator.attrgetter("dtype")


def _same(values: list | tuple) -> bool:
    """All equal to the first: count() compares in C, by identity first (dtypes, versions)."""
    return values.count(values[0]) == len(values)


def _columns(tensors: tuple[dict, ...]) -> dict[str, list] | None:
    """{name: [each dict's array]} when every dict has the same names, shapes and dtypes; else
    None. The arrays are not copied or stacked: the store copies them once, into its write."""
    if not _same(list(map(len, tensors))):
        return None
    out = {}
    for name in tensors[0]:
        try:
            arrays = list(map(operator.itemgetter(name), tensors))
            if not _same(list(map(_shape, arrays))) or not _same(list(map(_dtype, arrays))):
                return None
        except (KeyError, AttributeError):
            return None
        out[name] = arrays
    return out


def _grouped(records: list) -> PredictionBatch | None:
    """The records as one batch when they are of one model version and layout; else None. One
    transposition (zip) and a count per column: 0.30 us a request where sets of keys took 0.43."""
    models, versions, ids, times, inputs, outputs = zip(*records)
    if not _same(models) or not _same(versions):
        return None
    ins = _columns(inputs)
    outs = _columns(outputs) if ins is not None else None
    if outs is None:
        return None
    return PredictionBatch(models[0], versions[0], list(ids), list(times), ins, outs)


class PredictionLog:
    def __init__(self, store: FeedbackStore, rate_of: Callable[[str], float], capacity: int = 10_000) -> None:
        self.store = store
        self.rate_of = rate_of  # model -> sampling rate (0: off); read per request, so config reloads apply
        self.capacity = capacity
        self._enough = max(1, capacity // 4)  # queued requests that end the linger early
        self._queue: collections.deque = collections.deque()  # records (see _grouped) as answered; the batch being written aside
        self._idle = False  # the writer sleeps on _wake; the first request to see this wakes it
        self._cv = threading.Condition()
        self._started = 0  # writer batches started / done: flush() waits for one started after it
        self._done = 0
        self._wake = threading.Event()  # something is queued, or a flush, or stop
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
        queue = self._queue
        n = len(queue)
        if n >= self.capacity:
            metrics.PREDICTION_LOG.inc((call.model, "dropped"))
            return
        queue.append((call.model, lv.version, call.request_id, time.time(), call.inputs, call.outputs or {}))
        if self._idle:
            self._idle = False
            self._wake.set()  # once a batch, not a request
        elif n == self._enough:
            self._hurry.set()  # a burst: write before the queue fills, not after the linger

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
        return len(self._queue)

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._idle = True
            if not queue and not self._hurry.is_set():  # a request queued after this line sees _idle and wakes us
                self._wake.wait()
            self._wake.clear()
            self._idle = False
            if not self._stopping:
                self._hurry.wait(_LINGER)  # gather a batch; a flush or stop cuts it short
            self._hurry.clear()
            with self._cv:
                self._started += 1
                mine = self._started
            # popleft n times in C: appends that land meanwhile wait for the next batch
            records = list(itertools.starmap(queue.popleft, itertools.repeat((), len(queue))))
            if records:
                try:
                    batches = self._batches(records)
                except Exception:  # a bug here must not end the writer: these records are counted lost
                    log.exception("prediction log: grouping %d request(s) failed; they are not logged", len(records))
                    for model, n in collections.Counter(map(operator.itemgetter(0), records)).items():
                        metrics.PREDICTION_LOG.inc((model, "failed"), n)
                    batches = []
                if batches:
                    self._write(batches)
                del batches
            del records  # the requests' arrays go now, not at the next batch
            metrics.PREDICTION_LOG_QUEUE.set((), len(queue))
            with self._cv:
                self._done = mine
                self._cv.notify_all()
            if self._stopping and not queue:
                return

    def _batches(self, records: list) -> list[PredictionBatch]:
        """The records as batches of one model version and layout each. A batch of one layout
        is checked in C (_grouped); only a mixed one is grouped record by record."""
        batches: list[PredictionBatch] = []
        for i in range(0, len(records), _MAX_BATCH_ROWS):
            part = records[i:i + _MAX_BATCH_ROWS]
            batch = _grouped(part)
            if batch is not None:
                batches.append(batch)
                continue
            groups: dict[tuple, list] = {}
            for rec in part:
                try:
                    key = (rec[0], rec[1], _layout(rec[4]), _layout(rec[5]))
                except Exception:  # not arrays: a runtime broke its contract; never the request's failure
                    metrics.PREDICTION_LOG.inc((rec[0], "failed"))
                    log.exception("prediction log: a request of model %s is not logged", rec[0])
                    continue
                groups.setdefault(key, []).append(rec)
            batches.extend(map(_grouped, groups.values()))  # one layout each: never None
        return batches

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
