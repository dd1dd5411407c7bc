"""What a replica tells the fleet about itself, built from its event bus alone.

Every version state change, swap, model added or removed is an event; folding them gives,
per model, the version serving by default (and since when: the rollout measures its skew from
it), the versions routed, each known version's state and the failures with their reasons. No
reading of the manager's internals: this is one more bus subscriber, like metrics and logs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from hotserve.observability.events import (DeltaApplied, DeltaReplayed, DeltaReverted, ModelAdded, ModelRemoved, Record,
                                            Swapped, VersionForgotten, VersionStateChanged)

# The events that change what a replica reports; everything else is ignored.
KINDS = frozenset({VersionStateChanged.kind, VersionForgotten.kind, Swapped.kind, ModelAdded.kind, ModelRemoved.kind,
                   DeltaApplied.kind, DeltaReverted.kind, DeltaReplayed.kind})


@dataclass
class ModelReport:
    serving: int | None = None  # the default version
    serving_since: float | None = None  # unix time of the swap that made it the default
    routed: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)
    states: dict[int, str] = field(default_factory=dict)  # version -> START | LOADING | AVAILABLE | UNLOADING | END
    errors: dict[int, str] = field(default_factory=dict)  # version -> why it ended (failed versions only)
    revisions: dict[int, int] = field(default_factory=dict)  # version -> the parameter revision it serves (deltas)

    def doc(self) -> dict:
        return {
            "serving": self.serving,
            "serving_since": self.serving_since,
            "routed": list(self.routed),
            "labels": dict(self.labels),
            "versions": {str(v): s for v, s in sorted(self.states.items())},
            "failed": {str(v): e for v, e in sorted(self.errors.items())},
            "revisions": {str(v): r for v, r in sorted(self.revisions.items())},
        }


class ReplicaReport:
    """Per-model state folded from events; `apply` is quick (a bus subscriber's rule)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.models: dict[str, ModelReport] = {}

    def apply(self, record: Record) -> bool:
        """Fold one event in; True if the report changed."""
        ev = record.event
        if ev.kind not in KINDS:
            return False
        with self._lock:
            if isinstance(ev, ModelRemoved):
                return self.models.pop(ev.model, None) is not None
            m = self.models.setdefault(ev.model, ModelReport())
            if isinstance(ev, VersionStateChanged):
                m.states[ev.version] = ev.state
                if ev.state == "END" and ev.error_code != "OK":
                    m.errors[ev.version] = ev.error or ev.error_code
                elif ev.state in ("START", "LOADING"):
                    m.errors.pop(ev.version, None)  # tried again (its directory changed)
            elif isinstance(ev, VersionForgotten):
                m.states.pop(ev.version, None)
                m.errors.pop(ev.version, None)
                m.revisions.pop(ev.version, None)
            elif isinstance(ev, (DeltaApplied, DeltaReverted, DeltaReplayed)):
                m.revisions[ev.version] = ev.revision
            elif isinstance(ev, Swapped):
                if ev.default != m.serving:
                    m.serving_since = record.time
                m.serving = ev.default
                m.routed = tuple(ev.versions)
                m.labels = dict(ev.labels)
            return True

    def doc(self) -> dict:
        with self._lock:
            return {name: m.doc() for name, m in sorted(self.models.items())}
