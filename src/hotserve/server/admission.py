"""Admission control and isolation between models: each model runs its requests in its own
lane (a bounded thread pool with a bounded queue), so a slow or hung model exhausts only its
own share and every other model keeps its threads.

A request is admitted when its model has room: fewer than `max_concurrent_requests` running
plus `max_queued_requests` waiting, and (once the model has a recent median latency) a queue
short enough that the request can still finish within its timeout. Otherwise it is refused at
once, before its body is parsed: 429 / RESOURCE_EXHAUSTED with a Retry-After, so admitted
requests keep their latency instead of every request timing out.

A request that times out is answered 504 and its slot is released; its thread, which Python
cannot stop, is counted as abandoned until the model returns. When every thread of a model is
abandoned the model is *degraded*: its requests are refused at once (503) instead of queueing
behind calls that will not return, /readyz names it, and an event, a log line and a metric say
so. Python models that hang are abandoned with their thread counted rather than run out of
process: an out-of-process model costs a copy of every request and a second interpreter for
every model, to protect against a bug that a restart fixes; a model degraded for longer than
`wedged_seconds` makes /healthz fail, so an orchestrator restarts the server.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hotserve.errors import Code, HotserveError
from hotserve.observability.events import BUS, EventBus, ModelDegraded


class Rejected(HotserveError):
    """Refused by admission control; `retry_after` seconds is a hint for the client."""

    def __init__(self, message: str, code: Code, retry_after: float = 1.0) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after


@dataclass(frozen=True)
class AdmissionOptions:
    max_concurrent_requests: int = 8  # threads running one model's requests at once
    max_queued_requests: int = 128  # requests waiting for one of those threads
    wedged_seconds: float = 300.0  # degraded this long: /healthz fails (a restart reclaims hung threads)


class Lane:
    """One model's threads, queue and counters."""

    def __init__(self, model: str, max_concurrent: int, max_queued: int, bus: EventBus = BUS) -> None:
        self.model = model
        self.max_concurrent = max(1, max_concurrent)
        self.max_queued = max(0, max_queued)
        self.bus = bus
        self.executor = ThreadPoolExecutor(self.max_concurrent, thread_name_prefix=f"model-{model[:24]}")
        self._lock = threading.Lock()
        self.admitted = 0  # running or waiting, not counting abandoned calls
        self.abandoned = 0  # timed out, thread still inside the model
        self.degraded_since: float | None = None
        self.rejected = 0
        self._latency = 0.0  # recent service time, seconds (exponential moving average)

    def admit(self, timeout: float | None) -> None:
        """Take a slot or raise Rejected."""
        with self._lock:
            if self.abandoned >= self.max_concurrent:
                self.rejected += 1
                raise Rejected(
                    f"model {self.model!r} is degraded: {self.abandoned} call(s) did not return within their timeout "
                    f"and hold all {self.max_concurrent} of its threads; retry later", Code.UNAVAILABLE, 5.0)
            running = min(self.admitted, self.max_concurrent - self.abandoned)
            waiting = self.admitted - running
            if self.admitted >= self.max_concurrent - self.abandoned + self.max_queued:
                self.rejected += 1
                raise Rejected(f"model {self.model!r} is at capacity: {self.admitted} request(s) admitted "
                               f"(max_concurrent_requests {self.max_concurrent}, max_queued_requests {self.max_queued})",
                               Code.RESOURCE_EXHAUSTED, max(1.0, self._latency * waiting))
            if timeout and self._latency > 0 and waiting > 0:
                expected = self._latency * (waiting + 1) / max(1, self.max_concurrent - self.abandoned)
                if expected > timeout:
                    self.rejected += 1
                    raise Rejected(f"model {self.model!r} is overloaded: {waiting} request(s) queued would make this "
                                   f"one wait ~{expected:.1f}s, over its {timeout:g}s timeout",
                                   Code.RESOURCE_EXHAUSTED, max(1.0, expected - timeout))
            self.admitted += 1

    def done(self, seconds: float) -> None:
        """A request finished in time: its slot is free."""
        with self._lock:
            self.admitted -= 1
            self._latency = seconds if self._latency == 0 else 0.9 * self._latency + 0.1 * seconds

    def timed_out(self) -> None:
        """A request's waiter gave up: free the slot, count its thread as abandoned."""
        with self._lock:
            self.admitted -= 1
            self.abandoned += 1
            newly = self.abandoned >= self.max_concurrent and self.degraded_since is None
            if newly:
                self.degraded_since = time.monotonic()
        if newly:
            self.bus.publish(ModelDegraded(self.model, True, self.abandoned,
                                           f"all {self.max_concurrent} threads are inside calls that timed out"))

    def returned(self, seconds: float) -> None:
        """An abandoned call finally returned."""
        with self._lock:
            self.abandoned -= 1
            self._latency = 0.9 * self._latency + 0.1 * seconds
            recovered = self.degraded_since is not None and self.abandoned < self.max_concurrent
            if recovered:
                self.degraded_since = None
        if recovered:
            self.bus.publish(ModelDegraded(self.model, False, self.abandoned, "its calls returned"))

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class Lanes:
    """The lanes of every model, made on first use with the model's own limits."""

    def __init__(self, options: AdmissionOptions, bus: EventBus = BUS) -> None:
        self.options = options
        self.bus = bus
        self._lanes: dict[str, Lane] = {}
        self._lock = threading.Lock()

    def get(self, model: str, max_concurrent: int | None = None, max_queued: int | None = None) -> Lane:
        lane = self._lanes.get(model)
        if lane is None:
            with self._lock:
                lane = self._lanes.get(model)
                if lane is None:
                    lane = Lane(model, max_concurrent or self.options.max_concurrent_requests,
                                self.options.max_queued_requests if max_queued is None else max_queued, self.bus)
                    self._lanes[model] = lane
        return lane

    def items(self) -> list[tuple[str, Lane]]:
        return list(self._lanes.items())

    def degraded(self) -> dict[str, str]:
        return {name: f"{lane.abandoned} call(s) hung since {time.monotonic() - lane.degraded_since:.0f}s ago"
                for name, lane in list(self._lanes.items()) if lane.degraded_since is not None}

    def wedged(self) -> dict[str, str]:
        limit = self.options.wedged_seconds
        now = time.monotonic()
        return {name: f"degraded for {now - lane.degraded_since:.0f}s (over {limit:g}s)"
                for name, lane in list(self._lanes.items())
                if lane.degraded_since is not None and now - lane.degraded_since > limit}

    def shutdown(self) -> None:
        for lane in list(self._lanes.values()):
            lane.shutdown()
