"""A dynamic batcher: requests bound to the same version, signature and input layout are
merged into one run of the servable, then their outputs are split back.

Batches are keyed by the request's LoadedVersion object, so a batch never mixes versions
across a swap: each request keeps the handle it was bound to until its rows come back.
Scheduling follows TF Serving's basic batch scheduler: a batch closes when it is full, when
its oldest request waited batch_timeout_micros, or (timeout 0) as soon as a batch thread is
free; more than max_enqueued_batches waiting batches and new requests get UNAVAILABLE at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Mapping

import numpy as np

from hotserve.batching.parameters import BatchingParameters
from hotserve.errors import Code, HotserveError, Unavailable
from hotserve.observability import metrics, tracing

log = logging.getLogger("hotserve.batching")


class _Task:
    __slots__ = ("inputs", "rows", "done", "result", "error", "batch_rows")

    def __init__(self, inputs: Mapping[str, np.ndarray], rows: int) -> None:
        self.inputs = inputs
        self.rows = rows
        self.batch_rows = rows  # rows of the batch it ran in (a span attribute when tracing)
        self.done = threading.Event()
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class _Batch:
    __slots__ = ("key", "lv", "signature", "tasks", "rows", "opened")

    def __init__(self, key: tuple, lv, signature: str) -> None:
        self.key = key
        self.lv = lv
        self.signature = signature
        self.tasks: list[_Task] = []
        self.rows = 0
        self.opened = time.monotonic()


class Batcher:
    def __init__(self, model: str, params: BatchingParameters) -> None:
        self.model = model
        self.params = params
        self._timeout = params.batch_timeout_micros / 1e6
        self._cv = threading.Condition()
        self._open: dict[tuple, _Batch] = {}
        self._ready: deque[_Batch] = deque()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{model}-{i}", daemon=True)
                         for i in range(params.num_batch_threads)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Finish what is queued, then end the batch threads."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    def depth(self) -> int:
        """Batches waiting for a batch thread, open and closed (a gauge read at scrape time)."""
        return len(self._ready) + len(self._open)

    # -- request side -----------------------------------------------------------------------
    def run(self, lv, inputs: Mapping[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        """Run `inputs` (already checked against the signature) as part of a batch; blocks."""
        rows = _rows(inputs)
        if rows is None or rows == 0 or rows > self.params.max_batch_size:
            return lv.servable.predict(inputs, signature)  # cannot be merged: run alone
        key = (id(lv), signature, _layout(inputs, self.params.pad_variable_length_inputs))
        task = _Task(inputs, rows)
        with self._cv:
            if self._stopping:
                raise Unavailable(f"model {self.model!r}: batching is shutting down; retry")
            batch = self._open.get(key)
            if batch is not None and batch.rows + rows > self.params.max_batch_size:
                self._ready.append(self._open.pop(key))
                batch = None
            if batch is None:
                if len(self._ready) + len(self._open) >= self.params.max_enqueued_batches:
                    metrics.limit_rejected(self.model, "max_enqueued_batches")
                    raise Unavailable(
                        f"model {self.model!r}: batch queue is full ({self.params.max_enqueued_batches} batches waiting, "
                        "max_enqueued_batches); the server is overloaded, retry later")
                batch = self._open[key] = _Batch(key, lv, signature)
            batch.tasks.append(task)
            batch.rows += rows
            if batch.rows == self.params.max_batch_size:
                self._ready.append(self._open.pop(key))
            self._cv.notify()
        task.done.wait()
        if tracing.ENABLED:
            tracing.note_batch(task.batch_rows)
        if task.error is not None:
            raise task.error
        return task.result

    # -- batch threads ----------------------------------------------------------------------
    def _next(self) -> _Batch | None:
        with self._cv:
            while True:
                if self._ready:
                    return self._ready.popleft()
                if self._open:
                    oldest = min(self._open.values(), key=lambda b: b.opened)
                    wait = oldest.opened + self._timeout - time.monotonic()
                    if wait <= 0:
                        return self._open.pop(oldest.key)
                elif self._stopping:
                    return None
                else:
                    wait = None
                self._cv.wait(wait)

    def _work(self) -> None:
        while True:
            batch = self._next()
            if batch is None:
                return
            self._execute(batch)

    def _execute(self, batch: _Batch) -> None:
        tasks = batch.tasks
        metrics.BATCH_SIZE.observe((self.model,), batch.rows)
        now = time.monotonic()
        metrics.BATCH_QUEUE_SECONDS.observe((self.model,), now - batch.opened)
        try:
            merged, padded = self._merge(tasks)
            outputs = batch.lv.servable.predict(merged, batch.signature)
            offset = 0
            for task in tasks:
                sliced = {}
                for name, arr in outputs.items():
                    if arr.ndim == 0 or arr.shape[0] != padded:
                        raise HotserveError(
                            f"model {self.model!r}: output {name!r} has shape {list(arr.shape)}, not one row per input row "
                            f"({padded}); this model cannot be batched, start it without --enable_batching", Code.INTERNAL)
                    sliced[name] = arr[offset:offset + task.rows]
                task.result = sliced
                offset += task.rows
        except BaseException as exc:  # every request of the batch gets the error (classified by core.inference)
            for task in tasks:
                task.result, task.error = None, exc
        for task in tasks:
            task.batch_rows = batch.rows
            task.done.set()

    def _merge(self, tasks: list[_Task]) -> tuple[dict[str, np.ndarray], int]:
        rows = sum(t.rows for t in tasks)
        target = rows
        for size in self.params.allowed_batch_sizes:
            if size >= rows:
                target = size
                break
        merged = {}
        for name in tasks[0].inputs:
            parts = [t.inputs[name] for t in tasks]
            if self.params.pad_variable_length_inputs:
                parts = _pad_inner(parts)
            arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            if target > rows:
                # Pad with copies of the last row: always a valid input for the model.
                arr = np.concatenate([arr, np.repeat(arr[-1:], target - rows, axis=0)], axis=0)
            merged[name] = arr
        return merged, target


def _rows(inputs: Mapping[str, np.ndarray]) -> int | None:
    counts = {arr.shape[0] if arr.ndim else None for arr in inputs.values()}
    if len(counts) != 1:
        return None
    return counts.pop()


def _layout(inputs: Mapping[str, np.ndarray], pad: bool) -> tuple:
    return tuple((name, arr.dtype.str, arr.ndim if pad else arr.shape[1:]) for name, arr in sorted(inputs.items()))


def _pad_inner(parts: list[np.ndarray]) -> list[np.ndarray]:
    target = tuple(max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim))
    out = []
    for p in parts:
        pad = [(0, 0)] + [(0, t - s) for s, t in zip(p.shape[1:], target)]
        out.append(np.pad(p, pad) if any(w for _, w in pad) else p)
    return out
