"""Version lifecycle states, named as TF Serving names them in ModelVersionStatus, and the
book of one model's version statuses. Every state change is published on the event bus."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import Enum

from hotserve.errors import Code, NotFound
from hotserve.observability.events import BUS, EventBus, VersionForgotten, VersionStateChanged


class VersionState(str, Enum):
    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass
class VersionStatus:
    version: int
    state: VersionState = VersionState.START
    error_code: Code = Code.OK
    error_message: str = ""
    fingerprint: tuple = ()
    since: float = field(default_factory=time.time)
    load_seconds: float | None = None
    size_bytes: int = 0
    gates: list[dict] = field(default_factory=list)  # each gate's report, in the order they ran

    def set(self, state: VersionState, error_code: Code = Code.OK, error_message: str = "") -> None:
        self.state = state
        self.error_code = error_code
        self.error_message = error_message
        self.since = time.time()


# Ended versions that left the repository are kept in status this many at most, newest first,
# so operators can still read why a version failed.
ENDED_HISTORY = 10


class VersionBook:
    """One model's version statuses; readers get copies of the list under a short lock."""

    def __init__(self, model: str, bus: EventBus = BUS) -> None:
        self.model = model
        self.bus = bus
        self._statuses: dict[int, VersionStatus] = {}
        self._lock = threading.Lock()

    def start(self, version: int, fingerprint: tuple = (), size_bytes: int = 0) -> VersionStatus:
        with self._lock:
            st = VersionStatus(version, fingerprint=fingerprint, size_bytes=size_bytes)
            self._statuses[version] = st
        self._published(st)
        return st

    def set(self, version: int, state: VersionState, code: Code = Code.OK, message: str = "") -> None:
        with self._lock:
            st = self._statuses.get(version)
            if st is None:
                return
            st.set(state, code, message)
        self._published(st)

    def note(self, version: int, message: str) -> None:
        """A message on a version's status without a state change (e.g. waiting for memory)."""
        with self._lock:
            st = self._statuses.get(version)
            if st is not None:
                st.error_message = message

    def _published(self, st: VersionStatus) -> None:
        self.bus.publish(VersionStateChanged(self.model, st.version, st.state.value, st.error_code.value, st.error_message))

    def get(self, version: int) -> VersionStatus | None:
        return self._statuses.get(version)

    def forget(self, version: int) -> None:
        with self._lock:
            gone = self._statuses.pop(version, None)
        if gone is not None:
            self.bus.publish(VersionForgotten(self.model, version))

    def statuses(self, version: int | None = None) -> list[VersionStatus]:
        with self._lock:
            if version is not None:
                if version not in self._statuses:
                    raise NotFound(f"Could not find version {version} of model {self.model}")
                return [self._statuses[version]]
            return [self._statuses[v] for v in sorted(self._statuses, reverse=True)]

    def versions(self) -> list[int]:
        with self._lock:
            return list(self._statuses)

    def trim(self, present: set[int]) -> None:
        """Forget ended versions that left the repository, beyond the newest ENDED_HISTORY."""
        with self._lock:
            gone = [v for v, st in self._statuses.items() if v not in present and st.state is VersionState.END]
        for v in sorted(gone, reverse=True)[ENDED_HISTORY:]:
            self.forget(v)
