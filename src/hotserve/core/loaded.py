"""A loaded version with reference-counted handles.

Requests acquire a handle before touching the servable and release it when done. Retiring a
version stops new acquisitions; its servable is unloaded only once the count drops to zero,
so every request runs start to finish on the version it was bound to.
"""

from __future__ import annotations

import threading

from hotserve.runtimes.base import Servable


class LoadedVersion:
    __slots__ = ("model", "version", "servable", "version_str", "_lock", "_refs", "_retired", "_drained")

    def __init__(self, model: str, version: int, servable: Servable) -> None:
        self.model = model
        self.version = version
        self.version_str = str(version)
        self.servable = servable
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
