"""Prometheus metrics with a small in-process registry.

Our own registry rather than prometheus_client: the request path records two samples per
request, and a dict update under one uncontended lock is the cheapest way to do that
(bench/metrics_cost.py: prometheus_client costs 2-5x as much per request in-process and 3-9x
in its multiprocess mode; docs/observability.md has the figures). Names follow TF Serving's (`:tensorflow:serving:request_count`,
`:tensorflow:serving:request_latency` with its buckets, `:tensorflow:cc:saved_model:load_latency`)
where one exists, so existing dashboards keep working; hotserve's own are prefixed `hotserve_`.

With --num_workers every worker keeps its own registry (nothing shared on the request path);
a scrape is answered by one worker, which asks its siblings for their series over private unix
sockets (server/peers.py) and renders them all, each series labelled with its `worker`. Gauges
that are cheaper to read than to maintain (in-flight requests, queue depths, RSS) are set by
collectors just before rendering (`add_collector`).
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Callable, Iterable

from hotserve.observability import events, live
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

    def samples(self, extra: str = "") -> list[str]:
        with self._lock:
            items = list(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k, extra)} {_num(v)}" for k, v in items]


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

    def replace_all(self, values: dict[LabelValues, float]) -> None:
        """Set the whole series set at once (collectors: series that vanished go)."""
        with self._lock:
            self._values = dict(values)

    def samples(self, extra: str = "") -> list[str]:
        with self._lock:
            items = list(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k, extra)} {_num(v)}" for k, v in items]


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

    def samples(self, extra: str = "") -> list[str]:
        with self._lock:
            items = [(k, list(v)) for k, v in self._series.items()]
        lines = []
        bounds = [(b, 'le="' + _num(b) + '"' + ("," + extra if extra else "")) for b in (*self.buckets, math.inf)]
        for k, s in items:
            cumulative = 0
            for (_, le), n in zip(bounds, s[:-2]):
                cumulative += n
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, k, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, k, extra)} {_num(s[-2])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, k, extra)} {s[-1]}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self._collectors: list[Callable[[], None]] = []

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def add_collector(self, fn: Callable[[], None]) -> None:
        """fn() runs before every render and sets gauges from live state."""
        self._collectors.append(fn)

    def collect(self) -> None:
        for fn in self._collectors:
            try:
                fn()
            except Exception:  # a broken collector must not cost the scrape
                import logging

                logging.getLogger("hotserve.metrics").exception("metrics collector %r failed", fn)

    def families(self, extra: str = "") -> dict[str, list[str]]:
        """Every metric's sample lines (no headers), each with the `extra` label added: what a
        worker hands the sibling that answers a scrape."""
        self.collect()
        return {m.name: m.samples(extra) for m in self._metrics}

    def render(self, extra: str = "", siblings: Iterable[dict[str, list[str]]] = ()) -> bytes:
        """The exposition: this process's series (with `extra`) and any siblings' families,
        each metric's HELP and TYPE once, its samples from every process together."""
        own = self.families(extra)
        others = list(siblings)
        lines: list[str] = []
        for m in self._metrics:
            lines.extend(m.header())
            lines.extend(own[m.name])
            for fam in others:
                lines.extend(fam.get(m.name, ()))
        return ("\n".join(lines) + "\n").encode()


REGISTRY = Registry()

# TF Serving's request metrics (latency in microseconds and TF Serving's buckets: 10 us x 1.8^i,
# 33 of them, up to ~20 minutes), per model and version.
TFS_LATENCY_BUCKETS = tuple(10 * 1.8 ** i for i in range(33))
REQUEST_COUNT = REGISTRY.add(Counter(
    ":tensorflow:serving:request_count", "Requests by model, version, API, entrypoint and status.",
    ("model_name", "model_version", "API", "entrypoint", "status")))
REQUEST_LATENCY = REGISTRY.add(Histogram(
    ":tensorflow:serving:request_latency", "Request latency in microseconds.",
    ("model_name", "model_version", "API", "entrypoint"), TFS_LATENCY_BUCKETS))
WARMUP_LATENCY = REGISTRY.add(Histogram(
    ":tensorflow:serving:model_warmup_latency", "Warm-up replay latency in microseconds.",
    ("model_name", "status"), (1e3, 1e4, 1e5, 1e6, 1e7, 6e7)))
# TensorFlow's SavedModel loader metrics, for every runtime (model_path = the version directory).
LOAD_LATENCY_US = REGISTRY.add(Counter(
    ":tensorflow:cc:saved_model:load_latency",
    "Latency in microseconds for versions that were successfully loaded (load + gates).", ("model_path",)))
LOAD_ATTEMPTS = REGISTRY.add(Counter(
    ":tensorflow:cc:saved_model:load_attempt_count", "Version load attempts by outcome (success, fail).",
    ("model_path", "status")))
# hotserve's own.
LOADS = REGISTRY.add(Counter("hotserve_model_loads_total", "Version loads by outcome (ok, failed, refused).",
                             ("model", "outcome")))
LOAD_SECONDS = REGISTRY.add(Histogram("hotserve_model_load_seconds", "Load + gates duration of a version.",
                                      ("model", "outcome"), (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300)))
SWAPS = REGISTRY.add(Counter("hotserve_swaps_total", "Route table swaps (a new set of served versions).", ("model",)))
DEFAULT_VERSION = REGISTRY.add(Gauge("hotserve_default_version",
                                     "The version default requests go to (absent: none serving).", ("model",)))
ROUTE_WEIGHT = REGISTRY.add(Gauge("hotserve_route_weight_percent",
                                  "Share of default-routed requests each version gets (canary split).",
                                  ("model", "version")))
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
IN_FLIGHT = REGISTRY.add(Gauge("hotserve_requests_in_flight",
                               "Requests bound to a version and not yet finished, read at scrape time.",
                               ("model", "version")))
REQUEST_QUEUE = REGISTRY.add(Gauge("hotserve_request_queue_depth",
                                   "Requests waiting for one of their model's threads (its lane), read at scrape time.",
                                   ("model",)))
BATCH_QUEUE = REGISTRY.add(Gauge("hotserve_batch_queue_depth",
                                 "Batches waiting for a batch thread (open and closed), read at scrape time.",
                                 ("model",)))
BATCH_SIZE = REGISTRY.add(Histogram(
    ":tensorflow:serving:batching_session:input_batch_size", "Rows per batch run by the dynamic batcher.",
    ("model",), (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)))
BATCH_QUEUE_SECONDS = REGISTRY.add(Histogram(
    "hotserve_batch_queue_seconds", "Time from a batch's first request to its run.",
    ("model",), (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5)))
LIMIT_REJECTIONS = REGISTRY.add(Counter(
    "hotserve_limit_rejections_total",
    "Requests refused by a limit before running (batch queue full, admission control...), by limit.",
    ("model", "limit")))
CONFIG_RELOADS = REGISTRY.add(Counter("hotserve_config_reloads_total", "Model config reloads by outcome.", ("outcome",)))
DEGRADED = REGISTRY.add(Gauge("hotserve_model_degraded", "1 while a model's calls hang and its requests are refused.",
                              ("model",)))
GATES = REGISTRY.add(Counter("hotserve_gate_results_total", "Gate verdicts on versions by gate and outcome.",
                             ("model", "gate", "outcome")))
STORAGE_OUTAGES = REGISTRY.add(Counter("hotserve_storage_outages_total",
                                       "Times a model's base path became unreadable (served versions kept).", ("model",)))
STORAGE_AVAILABLE = REGISTRY.add(Gauge("hotserve_storage_available",
                                       "1 while a model's store answers, 0 during an outage (served versions kept).",
                                       ("model",)))
STORAGE_REQUESTS = REGISTRY.add(Counter(
    "hotserve_storage_requests_total",
    "Requests to a model's remote store by kind (list, head, get, put, delete): polls, manifests, routing state, "
    "downloads.", ("model", "kind")))


def count_storage_request(model: str, kind: str) -> None:
    STORAGE_REQUESTS.inc((model, kind))

# Continuous learning (learning/): the prediction log, feedback, the learner's candidates.
PREDICTION_LOG = REGISTRY.add(Counter(
    "hotserve_prediction_log_records_total",
    "Prediction log records by outcome: logged, dropped (queue full; the request is unaffected), failed (store error).",
    ("model", "outcome")))
PREDICTION_LOG_QUEUE = REGISTRY.add(Gauge("hotserve_prediction_log_queue_depth",
                                          "Records waiting for the prediction log's writer thread."))
FEEDBACK = REGISTRY.add(Counter(
    "hotserve_feedback_items_total",
    "Feedback items by outcome: joined (label joined to a logged prediction), example (posted with inputs), "
    "unknown (no logged prediction within the label window), rejected (bad call, nothing stored).",
    ("model", "outcome")))
LEARNER_CANDIDATES = REGISTRY.add(Counter(
    "hotserve_learner_candidates_total", "Learner candidates by gate outcome: published, refused, failed.",
    ("model", "outcome")))
LEARNING_FRESHNESS = REGISTRY.add(Histogram(
    "hotserve_learning_freshness_seconds",
    "From a label's arrival in the store to the swap that serves a version trained on it (newest label of each version).",
    ("model",), (0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300)))
DELTAS = REGISTRY.add(Counter(
    "hotserve_parameter_deltas_total",
    "Parameter deltas by outcome: applied, rejected, replayed (log entries read back), reverted_operator, reverted_guard, reverted_log.",
    ("model", "outcome")))
DELTA_SECONDS = REGISTRY.add(Histogram(
    "hotserve_parameter_delta_seconds", "From a delta's arrival to the switch that serves it (validated, built, written durably).",
    ("model",), (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)))
DELTA_BYTES = REGISTRY.add(Counter(
    "hotserve_parameter_delta_bytes_total", "Bytes of parameter values written by applied deltas.", ("model",)))
REVISION = REGISTRY.add(Gauge(
    "hotserve_model_revision", "The parameter revision each loaded version serves (0: as loaded).", ("model", "version")))
STORAGE_OPERATIONS = REGISTRY.add(Counter(
    "hotserve_storage_operations_total", "Model repository operations (Storage calls) by store scheme, operation and outcome (ok, not_found, error).",
    ("scheme", "op", "outcome")))
STORAGE_SECONDS = REGISTRY.add(Histogram(
    "hotserve_storage_operation_seconds", "Model repository operation (Storage call) duration by store scheme and operation.",
    ("scheme", "op"), (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)))
EVENTS = REGISTRY.add(Counter(
    "hotserve_events_total",
    "Events on the event bus by kind (every kind, including learning and delta events; see docs/observability.md).",
    ("model", "event")))
FLEET_CONNECTED = REGISTRY.add(Gauge("hotserve_fleet_connected",
                                     "1 while this replica is connected to its fleet's ZooKeeper (--fleet).", ()))
FLEET_ROLLOUTS = REGISTRY.add(Counter("hotserve_fleet_rollouts_total",
                                      "Fleet rollouts run by this replica (--fleet_auto_rollout) by outcome.",
                                      ("model", "outcome")))
DRAINING = REGISTRY.add(Gauge("hotserve_draining", "1 once SIGTERM started the drain (readiness off).", ()))


PROCESS_RSS = REGISTRY.add(Gauge("hotserve_process_resident_memory_bytes",
                                 "RSS of each serving process (with --num_workers, one series per worker).", ()))
SCRAPE_WORKERS = REGISTRY.add(Gauge("hotserve_scrape_workers",
                                    "Workers whose series this scrape holds (answered) or lacks (missing).", ("state",)))
REGISTRY.add_collector(lambda: PROCESS_RSS.set((), rss_of()))

# This process's worker id with --num_workers ("" when serving alone): its series carry
# worker="<id>" so a scrape that merges siblings keeps every process's counters apart, and a
# restarted worker's reset counters stay one series' reset, as Prometheus expects.
WORKER = ""


def worker_label() -> str:
    return f'worker="{WORKER}"' if WORKER else ""


def add_collector(fn: Callable[[], None]) -> None:
    REGISTRY.add_collector(fn)


def render() -> bytes:
    """This process's exposition (one worker, or serving alone)."""
    return REGISTRY.render(worker_label())


_LIVE = live.WINDOWS


def record_request(model: str, version: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
    """Called once per model request by the request frame: TF Serving's count and latency, and
    the dashboard's per-second window."""
    REQUEST_COUNT.inc((model, version, api, entrypoint, status))
    key = (model, version, api, entrypoint)
    REQUEST_LATENCY.observe(key, seconds * 1e6)
    # live.record, inlined: this runs for every request.
    w = _LIVE.get(key)
    if w is None:
        w = live.window(key)
    w.append(seconds if status == "OK" else -seconds)


def limit_rejected(model: str, limit: str) -> None:
    """Count one request a limit refused (call where the limit answers 429/503)."""
    LIMIT_REJECTIONS.inc((model, limit))


def storage_operation(scheme: str, op: str, outcome: str, seconds: float) -> None:
    """One model repository operation (repository/metered.py): outcome ok, not_found or error.
    (Requests billed by a remote store are counted apart: count_storage_request.)"""
    STORAGE_OPERATIONS.inc((scheme, op, outcome))
    STORAGE_SECONDS.observe((scheme, op), seconds)


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
    REVISION.remove((model, v))


# (model, version) -> the path a load started from, for the SavedModel metrics' model_path.
_LOAD_PATHS: dict[tuple[str, int], str] = {}


def _on_event(record: events.Record) -> None:
    """Metrics as a subscriber of the event bus: everything but requests is counted from events.
    Every kind is counted in hotserve_events_total; kinds with their own metrics (learning,
    deltas: add a branch here) update them too."""
    ev = record.event
    EVENTS.inc((ev.model, ev.kind))
    if isinstance(ev, events.VersionStateChanged):
        set_version_state(ev.model, ev.version, ev.state)
    elif isinstance(ev, events.VersionForgotten):
        forget_version(ev.model, ev.version)
    elif isinstance(ev, events.LoadStarted):
        _LOAD_PATHS[(ev.model, ev.version)] = ev.path
    elif isinstance(ev, events.LoadFinished):
        LOADS.inc((ev.model, "ok"))
        LOAD_SECONDS.observe((ev.model, "ok"), ev.seconds)
        path = _LOAD_PATHS.pop((ev.model, ev.version), f"{ev.model}/{ev.version}")
        LOAD_LATENCY_US.inc((path,), ev.seconds * 1e6)
        LOAD_ATTEMPTS.inc((path, "success"))
        VERSION_MEMORY.set((ev.model, str(ev.version), "measured"), ev.memory_bytes)
        VERSION_MEMORY.set((ev.model, str(ev.version), "estimate"), ev.file_bytes)
    elif isinstance(ev, events.LoadFailed):
        LOADS.inc((ev.model, ev.outcome))
        if ev.outcome == "failed":
            LOAD_SECONDS.observe((ev.model, "failed"), ev.seconds)
            path = _LOAD_PATHS.pop((ev.model, ev.version), f"{ev.model}/{ev.version}")
            LOAD_ATTEMPTS.inc((path, "fail"))
    elif isinstance(ev, events.Unloaded):
        VERSION_MEMORY.remove((ev.model, str(ev.version), "measured"))
    elif isinstance(ev, events.GateResult):
        GATES.inc((ev.model, ev.gate, "passed" if ev.passed else "failed"))
        if ev.gate == "warmup":
            WARMUP_LATENCY.observe((ev.model, "ok" if ev.passed else "failed"), ev.seconds * 1e6)
    elif isinstance(ev, events.Swapped):
        SWAPS.inc((ev.model,))
        CANARY_WEIGHT.remove_where(ev.model)
        ROUTE_WEIGHT.remove_where(ev.model)
        if ev.default is None:
            DEFAULT_VERSION.remove((ev.model,))
        else:
            DEFAULT_VERSION.set((ev.model,), ev.default)
            share = ev.canary_weight if ev.canary is not None else 0.0
            ROUTE_WEIGHT.set((ev.model, str(ev.default)), 100.0 - share)
            if ev.canary is not None:
                ROUTE_WEIGHT.set((ev.model, str(ev.canary)), share)
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
        STORAGE_AVAILABLE.set((ev.model,), 1.0 if ev.ended else 0.0)
    elif isinstance(ev, events.ModelDegraded):
        DEGRADED.set((ev.model,), 1.0 if ev.degraded else 0.0)
    elif isinstance(ev, events.ModelAdded):
        STORAGE_AVAILABLE.set((ev.model,), 1.0)
    elif isinstance(ev, events.ConfigReloaded):
        CONFIG_RELOADS.inc((ev.outcome,))
    elif isinstance(ev, events.LearnerCandidate):
        LEARNER_CANDIDATES.inc((ev.model, ev.outcome))
    elif isinstance(ev, events.LearnedVersionServed):
        LEARNING_FRESHNESS.observe((ev.model,), ev.freshness_seconds)
    elif isinstance(ev, events.ModelRemoved):
        DEFAULT_VERSION.remove((ev.model,))
        ROUTE_WEIGHT.remove_where(ev.model)
    elif isinstance(ev, events.FleetMembership):
        if ev.state in ("registered", "connected", "suspended", "lost"):
            FLEET_CONNECTED.set((), 1.0 if ev.state in ("registered", "connected") else 0.0)
    elif isinstance(ev, events.FleetRollout):
        if ev.phase in ("done", "aborted"):
            FLEET_ROLLOUTS.inc((ev.model, ev.phase))
    elif isinstance(ev, events.Draining):
        DRAINING.set((), 1.0)
    elif isinstance(ev, events.DeltaApplied):
        DELTAS.inc((ev.model, "applied"))
        DELTA_SECONDS.observe((ev.model,), ev.applied_ms / 1000.0)
        DELTA_BYTES.inc((ev.model,), ev.bytes)
        REVISION.set((ev.model, str(ev.version)), ev.revision)
    elif isinstance(ev, events.DeltaRejected):
        DELTAS.inc((ev.model, "rejected"))
    elif isinstance(ev, events.DeltaReverted):
        DELTAS.inc((ev.model, "reverted_" + ev.source))
        REVISION.set((ev.model, str(ev.version)), ev.revision)
    elif isinstance(ev, events.DeltaReplayed):
        DELTAS.inc((ev.model, "replayed"))
        REVISION.set((ev.model, str(ev.version)), ev.revision)


def subscribe(bus: events.EventBus = events.BUS):
    """Count the bus's events into the registry; returns the unsubscribe function."""
    return bus.subscribe(_on_event)
