"""The request frame: the one path every model request takes, whatever its front end.

    prepare (parse the wire format; errors name no version)
    -> bind one version (version | label | canary split | sticky key)   [invariant 1]
    -> execute on it (the front end's converter calls core.inference: inline, pool or batcher)
    -> release the handle
    -> record (metrics, and every observer such as the prediction log)

REST (TF Serving and V2) and gRPC (TF Serving and V2) front ends only convert wire formats and
hand the frame a `prepare` and an `execute`; what comes back (`Done`) carries the value or the
error and always the bound version, so every answer names the version that produced it,
errors included (invariant 6). Errors are mapped once, here: HotserveErrors keep their code,
anything else a model or a converter raises is INTERNAL with the version named.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, Protocol, TypeVar

from hotserve.core import inference
from hotserve.core.loaded import LoadedVersion
from hotserve.core.manager import Manager
from hotserve.errors import Code, HotserveError
from hotserve.observability import metrics, tracing
from hotserve.observability.events import BUS
from hotserve.server.admission import AdmissionOptions, Lane, Lanes, Rejected

log = logging.getLogger("hotserve.frame")

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class Call:
    """What a front end knows about a model request before parsing it."""

    model: str
    version: int | None = None
    label: str | None = None
    key: str | None = None  # sticky canary key (X-Request-Key)
    api: str = "predict"  # predict | classify | regress | infer | multi_inference
    entrypoint: str = "REST"  # REST | GRPC
    size: int = 0  # request bytes, for the inline decision
    request_id: str | None = None  # X-Request-Id, V2's body id, gRPC x-request-id; or made here
    # The decoded inputs and outputs of a predict/infer, left by core.inference for observers.
    inputs: dict | None = None
    outputs: dict | None = None
    trace_parent: Any = None  # the caller's trace context (only when tracing is on)


class _RequestIds:
    """Ids the server makes: 16 hex digits naming this process (its start, then 24 random bits)
    and a 16-digit counter. Unique across processes, in order within one, so the prediction
    log's join index packs a batch's ids as runs (learning/id_runs.py). Made a block at a time
    and handed out by list.pop: formatting one id per request cost ~2.5 us a request on the
    request path (the formatting code cold between requests) against 0.3 us measured alone; a
    block of 1,024 formats in one warm loop, and pop() is atomic under the GIL: no lock. Two
    threads refilling at once take different blocks; the block that loses is skipped, so ids
    are never repeated (gaps are harmless). A forked worker takes its own prefix."""

    _BLOCK = 1024

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = f"{(time.time_ns() >> 20) & 0xFF_FFFF_FFFF:010x}{random.getrandbits(24):06x}"
        self._blocks = itertools.count(0)
        self._ready: list[str] = []

    def __call__(self) -> str:
        try:
            return self._ready.pop()
        except IndexError:
            return self._refill()

    def _refill(self) -> str:
        start = next(self._blocks) * self._BLOCK + 1
        prefix = self._prefix
        block = [f"{prefix}{n:016x}" for n in range(start + self._BLOCK - 1, start - 1, -1)]  # pop() takes the smallest first
        first = block.pop()
        self._ready = block
        return first


new_request_id = _RequestIds()


@dataclass
class Done(Generic[R]):
    value: R | None
    error: HotserveError | None
    version: str | None  # the bound version, also on errors raised after binding
    seconds: float = 0.0
    request_id: str | None = None  # echoed in the answer (header, metadata)
    revision: str | None = None  # the bound version's parameter revision (invariant 1 extended)


class Observer(Protocol):
    def __call__(self, call: Call, lv: LoadedVersion, prepared: Any, value: Any) -> None:
        """Called in the request's thread after a successful execute, before release."""


class _Slot:
    """Shared by a request's thread and its waiter: the bound version, and who answered first."""

    __slots__ = ("lv", "lane", "_lock", "_timed_out", "_done")

    def __init__(self, lane: Lane | None = None) -> None:
        self.lv: LoadedVersion | None = None
        self.lane = lane
        self._lock = threading.Lock()
        self._timed_out = False
        self._done = False

    def started(self) -> bool:
        """Called by the thread before it works: False if the waiter already gave up."""
        with self._lock:
            return not self._timed_out

    def answered(self) -> bool:
        """Called by the thread when it finishes: True if the waiter already answered 504."""
        with self._lock:
            self._done = True
            return self._timed_out

    def time_out(self) -> bool:
        """Called by the waiter at its deadline: True if it answers (the thread is still running)."""
        with self._lock:
            if self._done:
                return False
            self._timed_out = True
            return True


def _as_error(exc: Exception, lv: LoadedVersion | None) -> HotserveError:
    if isinstance(exc, HotserveError):
        return exc
    where = f"model {lv.model} version {lv.version}: " if lv is not None else ""
    log.error("%s%s: %s", where, type(exc).__name__, exc, exc_info=exc)
    return HotserveError(f"{where}internal error: {type(exc).__name__}: {exc}", Code.INTERNAL)


class RequestFrame:
    def __init__(self, manager: Manager, executor: ThreadPoolExecutor, admission: AdmissionOptions | None = None) -> None:
        self.manager = manager
        self.executor = executor  # management calls; model requests run in their model's lane
        self.lanes = Lanes(admission or AdmissionOptions(), getattr(manager, "bus", BUS))
        self.observers: list[Observer] = []
        # model -> whether requests without an id get one made here (prediction logging is on).
        self.wants_id: Callable[[str], bool] | None = None

    def lane(self, model: str) -> Lane | None:
        mm = self.manager.models.get(model)
        if mm is None:
            return None
        cfg = mm.config
        floor = 2 * mm.batcher.params.max_batch_size if mm.batcher is not None else 0
        want = max(cfg.max_concurrent_requests or self.lanes.options.max_concurrent_requests, floor)
        return self.lanes.get(model, want, cfg.max_queued_requests)

    def run_sync(self, call: Call, prepare: Callable[[], P], execute: Callable[[LoadedVersion, P], R],
                 slot: "_Slot | None" = None) -> Done[R]:
        """The whole frame in the calling thread (a worker thread, or the loop when inline)."""
        t0 = time.perf_counter()
        if slot is not None and not slot.started():
            slot.lane.returned(0.0)  # gave up on while queued: do not run it at all
            return Done(None, None, None)
        span = tracing.start(call) if tracing.ENABLED else None
        lv: LoadedVersion | None = None
        value = None
        err: HotserveError | None = None
        try:
            prepared = prepare()
            if call.request_id is None and self.wants_id is not None and self.wants_id(call.model):
                call.request_id = new_request_id()
            lv = self.manager.acquire(call.model, call.version, call.label, call.key)
        except Exception as exc:
            err = _as_error(exc, None)
        else:
            if slot is not None:
                slot.lv = lv
            observers = self.observers
            try:
                if observers:
                    inference.capture_into(call)
                value = execute(lv, prepared)
                for observe in observers:
                    observe(call, lv, prepared, value)
            except Exception as exc:
                err = _as_error(exc, lv)
            finally:
                if observers:
                    inference.capture_into(None)
                lv.release()
        seconds = time.perf_counter() - t0
        version = lv.version_str if lv is not None else None
        revision = lv.revision_str if lv is not None else None
        late = slot is not None and slot.answered()
        if not late:
            metrics.record_request(call.model, version or "", call.api, call.entrypoint,
                                   err.code.value if err else "OK", seconds)
        if slot is not None and slot.lane is not None:
            (slot.lane.returned if late else slot.lane.done)(seconds)
        if span is not None:
            tracing.finish(span, lv, err.code.value if err else "OK")
        return Done(value, err, version, seconds, call.request_id, revision)

    async def run(self, call: Call, prepare: Callable[[], P], execute: Callable[[LoadedVersion, P], R],
                  timeout: float | None = None, timeout_flag: str = "") -> Done[R]:
        """Run the frame: on the event loop when --inference_threading=auto found the model cheap
        and the request is small (no thread hop), else in the worker pool. With a timeout,
        answer DEADLINE_EXCEEDED then (the work finishes in its thread; its handle is released
        there)."""
        if tracing.ENABLED:
            call.trace_parent = tracing.incoming()
        mm = self.manager.models.get(call.model)
        if mm is None or mm.runs_inline(call.size):
            return self.run_sync(call, prepare, execute)  # unknown model (a cheap 404) or a measured-cheap one
        lane = self.lane(call.model)
        try:
            lane.admit(timeout)
        except Rejected as exc:
            metrics.record_request(call.model, "", call.api, call.entrypoint, exc.code.value, 0.0)
            metrics.limit_rejected(call.model, "degraded" if exc.code is Code.UNAVAILABLE else "max_queued_requests")
            return Done(None, exc, None, 0.0, call.request_id)
        loop = asyncio.get_running_loop()
        slot = _Slot(lane)
        future = loop.run_in_executor(lane.executor, self.run_sync, call, prepare, execute, slot)
        if timeout is None:
            return await future
        done, _ = await asyncio.wait({future}, timeout=timeout)
        if done or not slot.time_out():
            return await future  # finished (just now, perhaps): its answer stands
        lane.timed_out()
        version = slot.lv.version_str if slot.lv is not None else None
        revision = slot.lv.revision_str if slot.lv is not None else None
        metrics.record_request(call.model, version or "", call.api, call.entrypoint, Code.DEADLINE_EXCEEDED.value,
                               timeout)
        hint = f" ({timeout_flag})" if timeout_flag else ""
        return Done(None, HotserveError(f"request did not finish within {timeout:g}s{hint}", Code.DEADLINE_EXCEEDED),
                    version, timeout, call.request_id, revision)
