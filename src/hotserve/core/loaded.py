"""A loaded version with reference-counted handles.

Requests acquire a handle before touching the servable and release it when done. Retiring a
version stops new acquisitions; its servable is unloaded only once the count drops to zero,
so every request runs start to finish on the version it was bound to.

The handle is a `Bound`: one (version, revision) of the version's parameters (invariant 1
extended). A parameter delta makes a new Bound and switches `LoadedVersion.head` to it with one
assignment (under the version's counter lock, held for that assignment only, never while a
delta is built); the old Bound takes no new requests and reports when its last one released it,
so its parameter state can be freed (and table overlays folded, core/parameters.py).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from hotserve.runtimes.base import Servable

# Outcomes kept per version: the last few for the inline decision (core/inline.py); while the
# version is in a canary split, enough for the analysis (a window is seconds long).
STATS_RECENT = 200
_STATS_WINDOW = 100_000


class VersionStats:
    """Recent request outcomes of one version: (monotonic time, ok, seconds). Wide only while a
    canary split runs (its analysis reads every outcome since the split began): 100,000 outcomes
    are ~12 MiB of Python objects in each worker, which every busy version kept for nothing."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: deque[tuple[float, bool, float]] = deque(maxlen=STATS_RECENT)

    def widen(self, wide: bool) -> None:
        """Keep the canary analysis' window (True) or only the recent outcomes (False). A request
        recording at the moment of the switch may go uncounted: these are statistics."""
        n = _STATS_WINDOW if wide else STATS_RECENT
        if self.events.maxlen != n:
            self.events = deque(self.events, maxlen=n)

    def record(self, ok: bool, seconds: float) -> None:
        self.events.append((time.monotonic(), ok, seconds))  # deque.append is atomic

    def since(self, t0: float) -> list[tuple[float, bool, float]]:
        return [e for e in list(self.events) if e[0] >= t0]


class Bound:
    """What a request is bound to: one revision of one loaded version. Reads like the version
    (model, version, stats, batcher) and runs the revision's parameters (`servable` is the
    servable seen through this revision's state). Release it exactly once."""

    __slots__ = ("lv", "model", "version", "version_str", "revision", "revision_str", "servable", "stats", "state",
                 "refs", "retired", "on_drained")

    def __init__(self, lv: "LoadedVersion", revision: int, servable, state=None) -> None:
        self.lv = lv
        self.model = lv.model
        self.version = lv.version
        self.version_str = lv.version_str
        self.revision = revision
        self.revision_str = str(revision)
        self.servable = servable
        self.stats = lv.stats
        self.state = state
        self.refs = 0  # guarded by the version's lock
        self.retired = False
        self.on_drained = None  # called once, in the releasing thread, when retired and unused

    @property
    def batcher(self):
        return self.lv.batcher

    @property
    def in_flight(self) -> int:
        return self.lv.in_flight

    def release(self) -> None:
        self.lv.release_bound(self)


class LoadedVersion:
    __slots__ = ("model", "version", "servable", "version_str", "stats", "batcher", "head", "params", "_lock",
                 "_refs", "_retired", "_drained")

    def __init__(self, model: str, version: int, servable: Servable, revision: int = 0, view=None, state=None) -> None:
        self.model = model
        self.version = version
        self.version_str = str(version)
        self.servable = servable
        self.stats = VersionStats()
        self.batcher = None  # the model's Batcher when dynamic batching is on
        self.params = None  # core.parameters.ParameterKeeper once attached
        # Per-version lock: held for a counter update or the head assignment only, never by a
        # load, a swap or the building of a delta.
        self._lock = threading.Lock()
        self._refs = 0
        self._retired = False
        self._drained = threading.Event()
        self.head = Bound(self, revision, servable if view is None else view, state)

    @property
    def revision(self) -> int:
        return self.head.revision

    def try_acquire(self) -> Bound | None:
        """The current revision's handle, counted; None once the version is retired."""
        with self._lock:
            if self._retired:
                return None
            self._refs += 1
            b = self.head
            b.refs += 1
            return b

    def release_bound(self, b: Bound) -> None:
        with self._lock:
            self._refs -= 1
            b.refs -= 1
            drained = b.retired and b.refs == 0
            if self._retired and self._refs == 0:
                self._drained.set()
        if drained and b.on_drained is not None:
            b.on_drained(b)

    def switch(self, new: Bound) -> Bound:
        """Make `new` the revision new requests bind to (one assignment); returns the old head,
        retired. Its on_drained runs now if nobody holds it, else at its last release."""
        with self._lock:
            old = self.head
            self.head = new
            old.retired = True
            idle = old.refs == 0
        if idle and old.on_drained is not None:
            old.on_drained(old)
        return old

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            if self._refs == 0:
                self._drained.set()

    @property
    def in_flight(self) -> int:
        return self._refs

    def wait_drained(self, timeout: float | None = None) -> bool:
        return self._drained.wait(timeout)
