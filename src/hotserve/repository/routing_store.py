"""Routing intent (labels, pin, rolled-back versions, canary weight, unloaded; in a fleet also the
fleet's serving version and the versions to prepare), kept where every server of a model can
read it, with watch and compare-and-set.

Operators, config reloads and canary analysis change routing intent; the planner turns it into
route tables. Keeping it in the repository (a file beside the versions, through Storage) makes
a restarted server come back the same and lets `--num_workers` siblings follow each other; a
fleet keeps it in ZooKeeper instead (cluster/), behind the same interface.

Compare-and-set: every write carries the revision it read; a write based on a stale read is
refused (returns None) and the writer re-reads and re-applies its change. The file store takes
an advisory lock beside the file on local disks, so workers of one host never lose an update.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Protocol

from hotserve.repository.storage import FileStat, Storage, StorageUnavailable

log = logging.getLogger("hotserve.repository")

STATE_FILE = ".hotserve_routing.json"
_LOCK_FILE = ".hotserve_routing.lock"


@dataclass(frozen=True)
class RoutingState:
    labels: dict[str, int] = field(default_factory=dict)
    pinned: int | None = None
    # version -> fingerprint it had when rolled back; a changed directory may serve again
    rolled_back: dict[int, tuple] = field(default_factory=dict)
    canary_weight: float | None = None  # None: the config's weight
    unloaded: bool = False  # an operator unloaded the model (Triton repository API)
    # A fleet's rollout state (written by cluster/rollout.py, read by every replica):
    fleet_target: int | None = None  # the version the fleet serves by default
    prepare: tuple[int, ...] = ()  # versions every replica loads without routing (rollout phase 1)
    keep: dict[int, float] = field(default_factory=dict)  # version -> unix time it stays prepared until

    def with_changes(self, **kw) -> "RoutingState":
        return replace(self, **kw)


def _fp_to_json(fp: tuple) -> list:
    return [list(x) for x in fp]


def _fp_from_json(raw: list) -> tuple:
    return tuple(tuple(x) for x in raw)


def encode_state(state: RoutingState, revision: int) -> bytes:
    doc = {
        "revision": revision,
        "labels": state.labels,
        "pinned": state.pinned,
        "rolled_back": {str(v): _fp_to_json(fp) for v, fp in state.rolled_back.items()},
        "canary_weight": state.canary_weight,
        "unloaded": state.unloaded,
        "fleet_target": state.fleet_target,
        "prepare": list(state.prepare),
        "keep": {str(v): until for v, until in state.keep.items()},
    }
    return json.dumps(doc, indent=1).encode()


def decode_state(raw: bytes) -> tuple[RoutingState, int]:
    doc = json.loads(raw)
    state = RoutingState(
        labels={str(k): int(v) for k, v in doc.get("labels", {}).items()},
        pinned=doc.get("pinned"),
        rolled_back={int(k): _fp_from_json(v) for k, v in doc.get("rolled_back", {}).items()},
        canary_weight=doc.get("canary_weight"),
        unloaded=bool(doc.get("unloaded", False)),
        fleet_target=None if doc.get("fleet_target") is None else int(doc["fleet_target"]),
        prepare=tuple(int(v) for v in doc.get("prepare", ())),
        keep={int(k): float(v) for k, v in doc.get("keep", {}).items()},
    )
    return state, int(doc.get("revision", 0))


class RoutingStore(Protocol):
    def read(self) -> tuple[RoutingState | None, int]:
        """(state or None when nothing was ever written, revision); revision 0 means none."""

    def compare_and_set(self, state: RoutingState, expected_revision: int) -> int | None:
        """Write state if the stored revision is still expected_revision; the new revision, or
        None when someone else wrote first."""

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call on_change (from any thread) whenever another writer changed the state."""

    def poll(self) -> None:
        """Check for changes now (stores without push notifications); a no-op where watches push."""

    def close(self) -> None:
        ...


def update(store: RoutingStore, change: Callable[[RoutingState], RoutingState], attempts: int = 20) -> tuple[RoutingState, int]:
    """Read-modify-write with compare-and-set, retrying on conflict; returns what was written."""
    for _ in range(attempts):
        state, rev = store.read()
        new = change(state or RoutingState())
        written = store.compare_and_set(new, rev)
        if written is not None:
            return new, written
    raise RuntimeError(f"routing state kept changing under {attempts} attempts to update it")


class FileRoutingStore:
    """The routing state as one JSON file beside the versions (hidden from the scanner by its dot)."""

    def __init__(self, storage: Storage, base_path: str,
                 listed: Callable[[], dict[str, FileStat] | None] | None = None) -> None:
        self.storage = storage
        self.path = storage.join(base_path, STATE_FILE)
        self._lock_path = storage.join(base_path, _LOCK_FILE) if storage.local else None
        self._thread_lock = threading.Lock()
        self._on_change: Callable[[], None] | None = None
        self._seen_revision: int | None = None
        # The files beside the versions as the scanner's last listing saw them (None: unknown).
        # With it, poll() reads the state file only when its entry changed: on object storage a
        # GET every poll per model would be most of the bill.
        self._listed = listed
        self._polled_tag: object = None
        self._just_read: tuple[int, RoutingState | None, int] | None = None

    def read(self) -> tuple[RoutingState | None, int]:
        just = self._just_read
        if just is not None and just[0] == threading.get_ident():
            self._just_read = None
            return just[1], just[2]
        try:
            raw = self.storage.read_bytes(self.path)
        except FileNotFoundError:
            return None, 0
        except (OSError, StorageUnavailable) as exc:
            log.warning("cannot read routing state %s (%s); using the last known", self.path, exc)
            raise StorageUnavailable(str(exc)) from exc
        try:
            return decode_state(raw)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            log.warning("ignoring unreadable routing state %s: %s", self.path, exc)
            return None, 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_path is None:
                yield
                return
            try:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                yield  # read-only repository: the write below fails and says so
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def compare_and_set(self, state: RoutingState, expected_revision: int) -> int | None:
        with self._locked():
            try:
                _, current = self.read()
            except StorageUnavailable:
                current = expected_revision
            if current != expected_revision:
                return None
            try:
                self.storage.write_bytes(self.path, encode_state(state, current + 1))
            except (OSError, StorageUnavailable) as exc:
                # A read-only repository still serves; the decision just will not survive a restart.
                log.warning("cannot persist routing state in %s (%s); it will not survive a restart", self.path, exc)
                return current
            self._seen_revision = current + 1
            return current + 1

    def watch(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        try:
            self._seen_revision = self.read()[1]
        except StorageUnavailable:
            self._seen_revision = None

    def poll(self) -> None:
        if self._on_change is None:
            return
        listing = self._listed() if self._listed is not None else None
        if listing is not None:
            st = listing.get(STATE_FILE)
            tag = (st.size, st.mtime_ns, st.etag) if st is not None else None
            if tag == self._polled_tag:
                return  # unchanged since the last read: no request
        try:
            state, rev = self.read()
        except StorageUnavailable:
            return
        if listing is not None:
            self._polled_tag = tag
        if rev != self._seen_revision:
            self._seen_revision = rev
            # The callback adopts the new state with read(): hand it this read instead of a
            # second GET (only to this thread, only during the callback).
            self._just_read = (threading.get_ident(), state, rev)
            try:
                self._on_change()
            finally:
                self._just_read = None

    def close(self) -> None:
        self._on_change = None
