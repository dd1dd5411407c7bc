"""A loaded version with reference-counted handles.

Requests acquire a handle before touching the servable and release it when done. Retiring a
version stops new acquisitions; its servable is unloaded only once the count drops to zero,
so every request runs start to finish on the version it was bound to.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from hotserve.runtimes.base import Servable

# Outcomes kept per version for canary analysis; older ones fall off (a window is seconds long).
_STATS_WINDOW = 100_000


class VersionStats:
    """Recent request outcomes of one version: (monotonic time, ok, seconds)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: deque[tuple[float, bool, float]] = deque(maxlen=_STATS_WINDOW)

    def record(self, ok: bool, seconds: float) -> None:
        self.events.append((time.monotonic(), ok, seconds))  # deque.append is atomic

    def since(self, t0: float) -> list[tuple[float, bool, float]]:
        return [e for e in list(self.events) if e[0] >= t0]


class LoadedVersion:
    __slots__ = ("model", "version", "servable", "version_str", "stats", "batcher", "_lock", "_refs",
                 "_retired", "_drained")

    def __init__(self, model: str, version: int, servable: Servable) -> None:
        self.model = model
        self.version = version
        self.version_str = str(version)
        self.servable = servable
        self.stats = VersionStats()
        self.batcher = None  # the model's Batcher when dynamic batching is on
        # Per-version lock: held for a counter update only, never by a load or a swap.
        self._lock = threading.Lock()
        self._refs = 0
        self._retired = False
        self._drained = threading.Event()

    def try_acquire(self) -> bool:
        with self._lock:
            if self._retired:
                return False
            self._refs += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            if self._retired and self._refs == 0:
                self._drained.set()

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
