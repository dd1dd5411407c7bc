"""Prometheus metrics with a small in-process registry.

Our own registry rather than prometheus_client: the request path records two samples per
request, and a dict update under one uncontended lock is the cheapest way to do that. Names
follow TF Serving's (`:tensorflow:serving:request_count`...) where one exists, so existing
dashboards keep working; hotserve's own metrics are prefixed `hotserve_`.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Iterable

from hotserve.observability import events
from hotserve.observability.process import rss_of

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str]) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {}

    def inc(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, labels: LabelValues = ()) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = list(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {}

    def set(self, labels: LabelValues, value: float) -> None:
        with self._lock:
            self._values[labels] = value

    def remove(self, labels: LabelValues) -> None:
        with self._lock:
            self._values.pop(labels, None)

    def remove_where(self, first_label: str) -> None:
        """Drop every series whose first label value is `first_label` (e.g. one model's)."""
        with self._lock:
            for k in [k for k in self._values if k and k[0] == first_label]:
                del self._values[k]

    def value(self, labels: LabelValues = ()) -> float | None:
        return self._values.get(labels)

    def render(self) -> list[str]:
        with self._lock:
            items = list(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str], buckets: Iterable[float]) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[LabelValues, list] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, labels: LabelValues, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            s = self._series.get(labels)
            if s is None:
                s = self._series[labels] = [0] * (len(self.buckets) + 1) + [0.0, 0]
            s[i] += 1
            s[-2] += value
            s[-1] += 1

    def count(self, labels: LabelValues) -> int:
        s = self._series.get(labels)
        return s[-1] if s else 0

    def render(self) -> list[str]:
        with self._lock:
            items = [(k, list(v)) for k, v in self._series.items()]
        lines = self.header()
        for k, s in items:
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), s[:-2]):
                cumulative += n
                le = 'le="' + _num(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, k, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, k)} {_num(s[-2])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, k)} {s[-1]}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def render(self) -> bytes:
        lines: list[str] = []
        for m in self._metrics:
            lines.extend(m.render())
        return ("\n".join(lines) + "\n").encode()


REGISTRY = Registry()

# TF Serving's request metrics (latency in microseconds, as TF Serving reports it).
REQUEST_COUNT = REGISTRY.add(Counter(
    ":tensorflow:serving:request_count", "Requests by model, version, API, entrypoint and status.",
    ("model_name", "model_version", "API", "entrypoint", "status")))
REQUEST_LATENCY = REGISTRY.add(Histogram(
    ":tensorflow:serving:request_latency", "Request latency in microseconds.",
    ("model_name", "model_version", "API", "entrypoint"),
    (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000)))
WARMUP_LATENCY = REGISTRY.add(Histogram(
    ":tensorflow:serving:model_warmup_latency", "Warm-up replay latency in microseconds.",
    ("model_name", "status"), (1e3, 1e4, 1e5, 1e6, 1e7, 6e7)))
# hotserve's own.
LOADS = REGISTRY.add(Counter("hotserve_model_loads_total", "Version loads by outcome (ok, failed, refused).",
                             ("model", "outcome")))
LOAD_SECONDS = REGISTRY.add(Histogram("hotserve_model_load_seconds", "Load + gates duration of a version.",
                                      ("model", "outcome"), (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300)))
SWAPS = REGISTRY.add(Counter("hotserve_swaps_total", "Route table swaps (a new set of served versions).", ("model",)))
ROLLBACKS = REGISTRY.add(Counter("hotserve_rollbacks_total", "Rollbacks by reason (canary, manual).", ("model", "reason")))
CANARY_DECISIONS = REGISTRY.add(Counter("hotserve_canary_decisions_total", "Canary analysis decisions.",
                                        ("model", "decision")))
CANARY_WEIGHT = REGISTRY.add(Gauge("hotserve_canary_weight_percent", "Share of default traffic sent to the canary.",
                                   ("model", "stable_version", "canary_version")))
VERSION_STATE = REGISTRY.add(Gauge("hotserve_version_state", "1 for the state each known version is in.",
                                   ("model", "version", "state")))
VERSION_MEMORY = REGISTRY.add(Gauge("hotserve_version_memory_bytes",
                                    "Memory of a loaded version: RSS growth at load (measured) or file size (estimate).",
                                    ("model", "version", "kind")))
BATCH_SIZE = REGISTRY.add(Histogram(
    ":tensorflow:serving:batching_session:input_batch_size", "Rows per batch run by the dynamic batcher.",
    ("model",), (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)))
BATCH_QUEUE_SECONDS = REGISTRY.add(Histogram(
    "hotserve_batch_queue_seconds", "Time from a batch's first request to its run.",
    ("model",), (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5)))
CONFIG_RELOADS = REGISTRY.add(Counter("hotserve_config_reloads_total", "Model config reloads by outcome.", ("outcome",)))
GATES = REGISTRY.add(Counter("hotserve_gate_results_total", "Gate verdicts on versions by gate and outcome.",
                             ("model", "gate", "outcome")))
STORAGE_OUTAGES = REGISTRY.add(Counter("hotserve_storage_outages_total",
                                       "Times a model's base path became unreadable (served versions kept).", ("model",)))
FLEET_CONNECTED = REGISTRY.add(Gauge("hotserve_fleet_connected",
                                     "1 while this replica is connected to its fleet's ZooKeeper (--fleet).", ()))
FLEET_ROLLOUTS = REGISTRY.add(Counter("hotserve_fleet_rollouts_total",
                                      "Fleet rollouts run by this replica (--fleet_auto_rollout) by outcome.",
                                      ("model", "outcome")))
DRAINING = REGISTRY.add(Gauge("hotserve_draining", "1 once SIGTERM started the drain (readiness off).", ()))
IN_FLIGHT = REGISTRY.add(Gauge("hotserve_requests_in_flight",
                               "Model requests bound to a version and not yet finished, at scrape time "
                               "(the autoscaling signal deploy/kubernetes uses).", ("model",)))


PROCESS_RSS = REGISTRY.add(Gauge("hotserve_process_resident_memory_bytes",
                                 "RSS of the serving process that answered this scrape (one per worker).", ("worker",)))
WORKER = "0"  # this process's worker id (--num_workers)


# Gauges read at scrape time (e.g. requests in flight per model), set by the serving process.
_COLLECTORS: list = []


def add_collector(fn) -> None:
    """Call fn() before every render (a gauge nobody publishes events for)."""
    _COLLECTORS.append(fn)


def render() -> bytes:
    PROCESS_RSS.set((WORKER,), rss_of())
    for fn in _COLLECTORS:
        fn()
    return REGISTRY.render()


def record_request(model: str, version: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
    REQUEST_COUNT.inc((model, version, api, entrypoint, status))
    REQUEST_LATENCY.observe((model, version, api, entrypoint), seconds * 1e6)


_STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")


def set_version_state(model: str, version: int, state: str) -> None:
    v = str(version)
    for s in _STATES:
        VERSION_STATE.set((model, v, s), 1.0 if s == state else 0.0)


def forget_version(model: str, version: int) -> None:
    v = str(version)
    for s in _STATES:
        VERSION_STATE.remove((model, v, s))
    for kind in ("measured", "estimate"):
        VERSION_MEMORY.remove((model, v, kind))


def _on_event(record: events.Record) -> None:
    """Metrics as a subscriber of the event bus: everything but requests is counted from events."""
    ev = record.event
    if isinstance(ev, events.VersionStateChanged):
        set_version_state(ev.model, ev.version, ev.state)
    elif isinstance(ev, events.VersionForgotten):
        forget_version(ev.model, ev.version)
    elif isinstance(ev, events.LoadFinished):
        LOADS.inc((ev.model, "ok"))
        LOAD_SECONDS.observe((ev.model, "ok"), ev.seconds)
        VERSION_MEMORY.set((ev.model, str(ev.version), "measured"), ev.memory_bytes)
        VERSION_MEMORY.set((ev.model, str(ev.version), "estimate"), ev.file_bytes)
    elif isinstance(ev, events.LoadFailed):
        LOADS.inc((ev.model, ev.outcome))
        if ev.outcome == "failed":
            LOAD_SECONDS.observe((ev.model, "failed"), ev.seconds)
    elif isinstance(ev, events.Unloaded):
        VERSION_MEMORY.remove((ev.model, str(ev.version), "measured"))
    elif isinstance(ev, events.GateResult):
        GATES.inc((ev.model, ev.gate, "passed" if ev.passed else "failed"))
        if ev.gate == "warmup":
            WARMUP_LATENCY.observe((ev.model, "ok" if ev.passed else "failed"), ev.seconds * 1e6)
    elif isinstance(ev, events.Swapped):
        SWAPS.inc((ev.model,))
        CANARY_WEIGHT.remove_where(ev.model)
        if ev.canary is not None and ev.default is not None:
            CANARY_WEIGHT.set((ev.model, str(ev.default), str(ev.canary)), ev.canary_weight)
    elif isinstance(ev, events.CanaryDecision):
        if ev.decision != "start":
            CANARY_DECISIONS.inc((ev.model, ev.decision))
    elif isinstance(ev, events.Rollback):
        ROLLBACKS.inc((ev.model, ev.reason))
    elif isinstance(ev, events.StorageOutage):
        if not ev.ended:
            STORAGE_OUTAGES.inc((ev.model,))
    elif isinstance(ev, events.ConfigReloaded):
        CONFIG_RELOADS.inc((ev.outcome,))
    elif isinstance(ev, events.FleetMembership):
        if ev.state in ("registered", "connected", "suspended", "lost"):
            FLEET_CONNECTED.set((), 1.0 if ev.state in ("registered", "connected") else 0.0)
    elif isinstance(ev, events.FleetRollout):
        if ev.phase in ("done", "aborted"):
            FLEET_ROLLOUTS.inc((ev.model, ev.phase))
    elif isinstance(ev, events.Draining):
        DRAINING.set((), 1.0)


def subscribe(bus: events.EventBus = events.BUS):
    """Count the bus's events into the registry; returns the unsubscribe function."""
    return bus.subscribe(_on_event)
