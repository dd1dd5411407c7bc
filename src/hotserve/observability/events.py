"""The event bus: everything that happens to a model, as typed events, in one ordered stream.

The manager and its parts publish; metrics, structured logs, the status history, the
dashboard's live stream, fleet reporting and test waiters subscribe. Nobody polls the
manager's internals. Request outcomes are not events (they are counted by metrics on the
request path); everything else that changes what serves is.

Subscribers run in the publisher's thread, in subscription order, and must be quick (a dict
update, a log line, a queue put). A subscriber that raises is logged and skipped; it never
breaks the publisher. The bus keeps the last `capacity` records so late readers
(`GET /v1/events?after=N`, the dashboard) can catch up, and `wait_for` lets a test block on an
event instead of sleeping.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterable

from hotserve.observability.subscribers import Subscribers

log = logging.getLogger("hotserve.events")


@dataclass(frozen=True)
class Event:
    """Base of every event. `kind` is the stable name logs, metrics and the dashboard use."""

    kind: ClassVar[str] = "event"
    level: ClassVar[int] = logging.INFO
    model: str = ""

    def summary(self) -> str:
        return self.kind

    def fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Record:
    """One published event with its place in the stream."""

    seq: int
    time: float  # unix seconds
    event: Event

    def to_dict(self) -> dict[str, Any]:
        doc = {"seq": self.seq, "time": self.time, "kind": self.event.kind, "message": self.event.summary()}
        doc.update(_jsonable(asdict(self.event)))
        return doc


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


Subscriber = Callable[[Record], None]


class EventBus:
    def __init__(self, capacity: int = 4096) -> None:
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._records: deque[Record] = deque(maxlen=capacity)
        self._subscribers = Subscribers()

    def publish(self, event: Event) -> Record:
        with self._cv:
            record = Record(next(self._seq), time.time(), event)
            self._records.append(record)
            subscribers = self._subscribers.snapshot()  # those subscribed before this record, as since() sees it
            self._cv.notify_all()
        self._subscribers.call(record, event.kind, subscribers)
        return record

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call fn for every later event; returns a function that unsubscribes."""
        return self._subscribers.add(fn)

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._records[-1].seq if self._records else 0

    def since(self, after: int = 0, model: str | None = None, kinds: Iterable[str] | None = None) -> list[Record]:
        wanted = set(kinds) if kinds else None
        with self._lock:
            records = list(self._records)
        return [r for r in records if r.seq > after and (model is None or r.event.model == model)
                and (wanted is None or r.event.kind in wanted)]

    def wait_since(self, after: int, timeout: float) -> list[Record]:
        """Records after `after`, waiting up to timeout for the first one (long polling)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not (self._records and self._records[-1].seq > after):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cv.wait(remaining)
            return [r for r in self._records if r.seq > after]

    def wait_for(self, match: Callable[[Event], bool], timeout: float, after: int = 0) -> Record | None:
        """The first record after `after` whose event matches, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for r in self.since(seen):
                if match(r.event):
                    return r
                seen = r.seq
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.wait_since(seen, remaining)


# The process's bus. Components take a bus argument (unit tests pass their own) and default to it.
BUS = EventBus()


# -- the events ------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionStateChanged(Event):
    kind: ClassVar[str] = "version_state"
    version: int = -1
    state: str = ""
    error_code: str = "OK"
    error: str = ""

    def summary(self) -> str:
        why = f": {self.error}" if self.error else ""
        return f"model {self.model} version {self.version}: {self.state}{why}"


@dataclass(frozen=True)
class VersionForgotten(Event):
    """A long-ended version dropped out of status (its metrics series go too)."""

    kind: ClassVar[str] = "version_forgotten"
    level: ClassVar[int] = logging.DEBUG
    version: int = -1

    def summary(self) -> str:
        return f"model {self.model} version {self.version}: dropped from status"


@dataclass(frozen=True)
class LoadStarted(Event):
    kind: ClassVar[str] = "load_start"
    version: int = -1
    path: str = ""

    def summary(self) -> str:
        return f"model {self.model} version {self.version}: loading from {self.path}"


@dataclass(frozen=True)
class LoadFinished(Event):
    kind: ClassVar[str] = "load_done"
    version: int = -1
    seconds: float = 0.0
    memory_bytes: int = 0
    file_bytes: int = 0

    def summary(self) -> str:
        return (f"model {self.model} version {self.version}: available after {self.seconds:.3f}s "
                f"(memory +{self.memory_bytes / 2**20:.1f} MiB, files {self.file_bytes / 2**20:.1f} MiB)")


@dataclass(frozen=True)
class LoadFailed(Event):
    kind: ClassVar[str] = "load_failed"
    level: ClassVar[int] = logging.ERROR
    version: int = -1
    error_code: str = "UNKNOWN"
    error: str = ""
    outcome: str = "failed"  # failed | refused
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"model {self.model} version {self.version}: failed to load, not serving it ({self.error}); "
                "it is retried only if its directory changes")


@dataclass(frozen=True)
class GateResult(Event):
    """One gate's verdict on one version, with what it measured (its report)."""

    kind: ClassVar[str] = "gate"
    version: int = -1
    gate: str = ""
    passed: bool = True
    seconds: float = 0.0
    report: dict = field(default_factory=dict)
    error: str = ""

    def summary(self) -> str:
        if self.gate == "warmup" and self.passed:
            return (f"model {self.model} version {self.version}: replayed {self.report.get('requests', 0)} "
                    f"warm-up request(s) in {self.seconds:.3f}s")
        verdict = "passed" if self.passed else f"FAILED: {self.error}"
        detail = ", ".join(f"{k} {v}" for k, v in self.report.items())
        return f"model {self.model} version {self.version}: gate {self.gate} {verdict} in {self.seconds:.3f}s" + (
            f" ({detail})" if detail else "")


@dataclass(frozen=True)
class Swapped(Event):
    """The one atomic switch: the model's route table now routes like this."""

    kind: ClassVar[str] = "swap"
    default: int | None = None
    versions: tuple[int, ...] = ()
    labels: dict = field(default_factory=dict)
    canary: int | None = None
    canary_weight: float = 0.0
    previous_default: int | None = None

    @property
    def version(self) -> int | None:
        return self.default

    def summary(self) -> str:
        canary = f", canary {self.canary} at {self.canary_weight:g}%" if self.canary is not None else ""
        return (f"model {self.model}: now serving versions {list(self.versions)} (default "
                f"{self.default if self.default is not None else -1}{canary}; labels {self.labels})")


@dataclass(frozen=True)
class Retired(Event):
    kind: ClassVar[str] = "retire"
    version: int = -1
    in_flight: int = 0

    def summary(self) -> str:
        return f"model {self.model} version {self.version}: retired, draining {self.in_flight} in-flight request(s)"


@dataclass(frozen=True)
class Unloaded(Event):
    kind: ClassVar[str] = "unloaded"
    version: int = -1

    def summary(self) -> str:
        return f"model {self.model} version {self.version}: unloaded"


@dataclass(frozen=True)
class RoutingChanged(Event):
    """Routing intent changed (labels, pin, rollback, canary weight, unload), by whom."""

    kind: ClassVar[str] = "routing"
    source: str = ""  # operator | config | canary | auto_canary | peer
    action: str = ""
    labels: dict = field(default_factory=dict)
    pinned: int | None = None
    version: int | None = None

    def summary(self) -> str:
        who = "another worker, fleet replica or the CLI" if self.source == "peer" else self.source
        return f"model {self.model}: routing changed by {who} ({self.action}): labels {self.labels}, pinned {self.pinned}"


@dataclass(frozen=True)
class CanaryDecision(Event):
    kind: ClassVar[str] = "canary_decision"
    version: int = -1
    stable: int = -1
    decision: str = ""  # promote | rollback | promote_held | rollback_held | start
    reason: str = ""

    @property
    def level(self) -> int:  # type: ignore[override]
        return logging.WARNING if self.decision.startswith("rollback") or self.decision.endswith("held") else logging.INFO

    def summary(self) -> str:
        if self.decision == "start":
            return f"model {self.model}: version {self.version} enters as canary beside stable version {self.stable}"
        if self.decision == "rollback":
            return f"model {self.model}: canary version {self.version} rolled back, stable version {self.stable} keeps serving: {self.reason}"
        if self.decision == "promote":
            return f"model {self.model}: canary version {self.version} promoted to stable (was {self.stable}): {self.reason}"
        return f"model {self.model}: canary version {self.version}: {self.decision} ({self.reason}); holding as configured"


@dataclass(frozen=True)
class Rollback(Event):
    kind: ClassVar[str] = "rollback"
    level: ClassVar[int] = logging.WARNING
    version: int = -1
    from_version: int | None = None
    reason: str = "manual"

    def summary(self) -> str:
        return f"model {self.model}: rollback from version {self.from_version} to {self.version} ({self.reason})"


@dataclass(frozen=True)
class StorageOutage(Event):
    kind: ClassVar[str] = "storage_outage"
    level: ClassVar[int] = logging.WARNING
    message: str = ""
    serving: tuple[int, ...] = ()
    ended: bool = False

    def summary(self) -> str:
        if self.ended:
            return f"model {self.model}: storage reachable again"
        return (f"model {self.model}: storage unavailable ({self.message}); keeping served versions "
                f"{list(self.serving) or 'none'} until it is back")


@dataclass(frozen=True)
class ConfigReloaded(Event):
    kind: ClassVar[str] = "config_reload"
    outcome: str = "ok"  # ok | invalid | failed | unreadable
    models: tuple[str, ...] = ()
    error: str = ""

    @property
    def level(self) -> int:  # type: ignore[override]
        return logging.INFO if self.outcome == "ok" else logging.ERROR

    def summary(self) -> str:
        if self.outcome == "ok":
            return f"config reloaded: now serving models {list(self.models)}"
        return f"config {self.outcome}: {self.error}; keeping the running config"


@dataclass(frozen=True)
class ModelAdded(Event):
    kind: ClassVar[str] = "model_added"
    base_path: str = ""

    def summary(self) -> str:
        return f"model {self.model}: watching {self.base_path}"


@dataclass(frozen=True)
class ModelRemoved(Event):
    kind: ClassVar[str] = "model_removed"

    def summary(self) -> str:
        return f"model {self.model}: removed from the config; draining and unloading"


@dataclass(frozen=True)
class ModelDegraded(Event):
    """A model's calls keep hanging (degraded: its requests are refused at once), or it recovered."""

    kind: ClassVar[str] = "model_degraded"
    level: ClassVar[int] = logging.WARNING
    degraded: bool = True
    hung_calls: int = 0
    reason: str = ""

    def summary(self) -> str:
        if self.degraded:
            return f"model {self.model}: degraded, {self.hung_calls} call(s) hung ({self.reason}); refusing its requests"
        return f"model {self.model}: recovered ({self.reason})"


@dataclass(frozen=True)
class Notice(Event):
    """Anything else worth a line in the timeline (memory waits, unload-first, pinned version gone)."""

    kind: ClassVar[str] = "notice"
    level: ClassVar[int] = logging.WARNING
    version: int | None = None
    what: str = ""
    message: str = ""

    def summary(self) -> str:
        return f"model {self.model}: {self.message}"


@dataclass(frozen=True)
class LearnerCandidate(Event):
    """The learner trained a candidate and the gate decided: published as `version`, refused
    (worse than the serving version by more than --max_metric_drop), or failed (an error)."""

    kind: ClassVar[str] = "learner_candidate"
    version: int | None = None  # the published version (None unless published)
    parent: int | None = None  # the serving version it was compared with (None: first version)
    outcome: str = ""  # published | refused | failed
    metric: str = ""  # the gate metric
    candidate_metrics: dict = field(default_factory=dict)
    parent_metrics: dict = field(default_factory=dict)
    max_metric_drop: float = 0.0
    examples: int = 0
    watermark: str = ""
    reason: str = ""

    @property
    def level(self) -> int:  # type: ignore[override]
        return logging.INFO if self.outcome == "published" else logging.WARNING

    def summary(self) -> str:
        cand = ", ".join(f"{k} {v:.4f}" for k, v in self.candidate_metrics.items() if isinstance(v, (int, float)))
        par = ", ".join(f"{k} {v:.4f}" for k, v in self.parent_metrics.items() if isinstance(v, (int, float)))
        against = f"serving version {self.parent} ({par})" if self.parent is not None else "no baseline (first version)"
        if self.outcome == "published":
            return (f"model {self.model}: learner published version {self.version} trained on {self.examples} new "
                    f"example(s) up to watermark {self.watermark}: candidate ({cand}) vs {against}")
        if self.outcome == "published_delta":
            return (f"model {self.model}: learner published a parameter delta of version {self.version} trained on "
                    f"{self.examples} new example(s) up to watermark {self.watermark}: candidate ({cand}) vs {against}")
        if self.outcome == "unchanged":
            return f"model {self.model}: learner candidate changed no parameter; nothing published"
        if self.outcome == "refused":
            return (f"model {self.model}: learner gate REFUSED a candidate trained on {self.examples} example(s): "
                    f"{self.metric} candidate ({cand}) vs {against}, max_metric_drop {self.max_metric_drop:g}: {self.reason}")
        return f"model {self.model}: learner candidate failed: {self.reason}"


@dataclass(frozen=True)
class LearnedVersionServed(Event):
    """A version the learner published is now the default: how fresh its newest label is."""

    kind: ClassVar[str] = "learned_version_served"
    version: int = -1
    watermark: str = ""
    freshness_seconds: float = 0.0  # newest label's arrival in the store -> this swap
    oldest_label_seconds: float = 0.0  # the batch's oldest new label -> this swap

    def summary(self) -> str:
        return (f"model {self.model} version {self.version}: serving labels up to watermark {self.watermark}, "
                f"{self.freshness_seconds:.3f}s after the newest arrived ({self.oldest_label_seconds:.3f}s after the oldest)")


@dataclass(frozen=True)
class FleetMembership(Event):
    """This replica's standing in its fleet (cluster/): registered, ZooKeeper connection
    suspended / lost / back, deregistered. Serving never depends on it."""

    kind: ClassVar[str] = "fleet"
    replica: str = ""
    state: str = ""  # registered | connected | suspended | lost | deregistered
    message: str = ""

    @property
    def level(self) -> int:  # type: ignore[override]
        return logging.WARNING if self.state in ("suspended", "lost") else logging.INFO

    def summary(self) -> str:
        return f"fleet replica {self.replica}: {self.state}" + (f" ({self.message})" if self.message else "")


@dataclass(frozen=True)
class Draining(Event):
    """SIGTERM: readiness fails now; requests are still served for `seconds`, then the server
    stops accepting, finishes what is in flight and exits."""

    kind: ClassVar[str] = "draining"
    level: ClassVar[int] = logging.WARNING
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"draining: readiness off, still serving for {self.seconds:g}s, then finishing in-flight "
                "requests and exiting")


@dataclass(frozen=True)
class FleetRollout(Event):
    """A fleet rollout run by this replica (--fleet_auto_rollout): its phases and outcome."""

    kind: ClassVar[str] = "fleet_rollout"
    version: int | None = None
    phase: str = ""  # progress | done | aborted | skipped | unchanged
    message: str = ""

    @property
    def level(self) -> int:  # type: ignore[override]
        return logging.ERROR if self.phase == "aborted" else logging.INFO

    def summary(self) -> str:
        return f"model {self.model}: fleet rollout of version {self.version}: {self.phase}: {self.message}"


@dataclass(frozen=True)
class DeltaApplied(Event):
    """A parameter delta is now served: `revision` of `version`, built on `parent` (core/parameters.py)."""

    kind: ClassVar[str] = "delta_applied"
    version: int = -1
    revision: int = 0
    parent: int = 0
    tensors: tuple[str, ...] = ()
    rows: int = 0
    bytes: int = 0
    applied_ms: float = 0.0  # its arrival (or, following another writer, its commit) -> the switch
    source: str = ""
    seq: int = 0  # its entry in the version's delta log

    def summary(self) -> str:
        return (f"model {self.model} version {self.version}: serving revision {self.revision} (from {self.parent}): "
                f"{len(self.tensors)} tensor(s) {list(self.tensors)[:5]}, {self.rows} row(s), "
                f"{self.bytes / 2**20:.2f} MiB, applied in {self.applied_ms:.1f} ms ({self.source or 'api'})")


@dataclass(frozen=True)
class DeltaRejected(Event):
    """A delta was refused whole (bad input, revision conflict, runtime without deltas, or a
    logged entry that cannot be read): nothing changed."""

    kind: ClassVar[str] = "delta_rejected"
    level: ClassVar[int] = logging.WARNING
    version: int = -1
    code: str = ""
    reason: str = ""
    source: str = ""

    def summary(self) -> str:
        return f"model {self.model} version {self.version}: delta rejected ({self.code}): {self.reason}"


@dataclass(frozen=True)
class DeltaReverted(Event):
    """The served revision went back: an operator's rollback, or the guard reverting a delta
    whose online metric was worse than its parent's by more than the margin."""

    kind: ClassVar[str] = "delta_reverted"
    level: ClassVar[int] = logging.WARNING
    version: int = -1
    revision: int = 0  # served from now on
    from_revision: int = 0
    reason: str = ""
    source: str = "operator"  # operator | guard | log (a rollback another process wrote)

    def summary(self) -> str:
        return (f"model {self.model} version {self.version}: revision {self.from_revision} reverted, serving "
                f"revision {self.revision} ({self.source}: {self.reason})")


@dataclass(frozen=True)
class DeltaReplayed(Event):
    """Deltas read back from the repository: at load (a restart, a new worker or replica) or
    following another writer; the version now serves `revision`."""

    kind: ClassVar[str] = "delta_replayed"
    version: int = -1
    revision: int = 0
    entries: int = 0
    seconds: float = 0.0
    at: str = "load"  # load | follow

    def summary(self) -> str:
        return (f"model {self.model} version {self.version}: replayed {self.entries} delta log entr"
                f"{'y' if self.entries == 1 else 'ies'} ({self.at}) in {self.seconds:.3f}s; serving revision {self.revision}")


def subscribe_logging(bus: EventBus = BUS, logger: logging.Logger | None = None) -> Callable[[], None]:
    """Every event becomes one log line with a stable `event` field (and model, version)."""
    out = logger or logging.getLogger("hotserve.events")

    def on_event(record: Record) -> None:
        ev = record.event
        level = ev.level
        if out.isEnabledFor(level):
            extra = {"event": ev.kind, "model": ev.model, "seq": record.seq}
            version = getattr(ev, "version", None)
            if version is not None:
                extra["version"] = version
            out.log(level, ev.summary(), extra=extra)

    return bus.subscribe(on_event)
