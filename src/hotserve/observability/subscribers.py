"""Callbacks that threads add and remove at any time while another thread calls them: the set
is an immutable tuple replaced on change, so calling takes no lock and a callback may
unsubscribe itself; one failing callback is logged and does not stop the others."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger("hotserve.observability")


class Subscribers:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fns: tuple[Callable[[Any], None], ...] = ()

    def add(self, fn: Callable[[Any], None]) -> Callable[[], None]:
        """Subscribe fn; returns a function that unsubscribes it."""
        with self._lock:
            self._fns = (*self._fns, fn)

        def unsubscribe() -> None:
            with self._lock:
                self._fns = tuple(s for s in self._fns if s is not fn)

        return unsubscribe

    def snapshot(self) -> tuple[Callable[[Any], None], ...]:
        """The callbacks subscribed now (take it where the caller orders events)."""
        return self._fns

    def call(self, item: Any, what: str, fns: tuple[Callable[[Any], None], ...] | None = None) -> None:
        """Call every callback (or those of an earlier snapshot) with item; `what` names it in logs."""
        for fn in self._fns if fns is None else fns:
            try:
                fn(item)
            except Exception:
                log.exception("subscriber %r failed on %s", fn, what)
