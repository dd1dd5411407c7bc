"""The routing intent of one model in ZooKeeper: the RoutingStore a fleet's replicas share.

Labels, pins, canary weights, rollbacks and the fleet's serving version written through any
replica (or the rollout CLI) reach every replica at once: a write is compare-and-set on the
znode's version, and each replica holds a kazoo DataWatch that pushes every change (poll is a
no-op). The revision the protocol speaks of is the znode version + 1 (0: no znode yet).

A flip's latency is the time from the rollout's write to every replica's swap, so the path is
kept short: the DataWatch (which re-reads the znode on each notification, as ZooKeeper watches
carry no data) keeps the latest state it read, `read()` answers from it while the watch is in
place, and the change callback runs in the watch's own thread. ZooKeeper delivers a watch event
before any later read result, so the kept state is never older than what a read would return
once the event has been handled; the state only ever moves forward (a late answer carrying an
older znode version is dropped). A compare-and-set that fails drops the kept state, so the
retry reads ZooKeeper itself.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from hotserve.cluster import zk
from hotserve.repository.routing_store import RoutingState, decode_state, encode_state

log = logging.getLogger("hotserve.fleet")


def _decode(data: bytes | None, path: str) -> RoutingState | None:
    if not data:
        return None
    try:
        return decode_state(data)[0]
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        log.warning("ignoring unreadable routing state in ZooKeeper %s: %s", path, exc)
        return None


class ZkRoutingStore:
    def __init__(self, client, path: str, op_timeout: float = zk.OP_TIMEOUT_SECONDS) -> None:
        self.client = client
        self.path = path
        self.op_timeout = op_timeout
        self._on_change: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._kept: tuple[RoutingState | None, int] | None = None  # from the watch; None: read ZooKeeper
        self._seen = -1  # the newest revision handed to on_change (or written by us)
        self._closed = False

    def read(self) -> tuple[RoutingState | None, int]:
        with self._lock:
            kept = self._kept
        if kept is not None:
            return kept
        from kazoo.exceptions import NoNodeError

        try:
            data, stat = zk.call(self.client.get_async(self.path), self.op_timeout, f"read {self.path}")
        except NoNodeError:
            return None, 0
        with self._lock:
            self._seen = max(self._seen, stat.version + 1)  # what the reader holds now is no news
        return _decode(data, self.path), stat.version + 1

    def compare_and_set(self, state: RoutingState, expected_revision: int) -> int | None:
        from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

        data = encode_state(state, expected_revision + 1)
        try:
            if expected_revision == 0:
                zk.call(self.client.create_async(self.path, data, makepath=True), self.op_timeout,
                        f"create {self.path}")
                written = 1
            else:
                stat = zk.call(self.client.set_async(self.path, data, version=expected_revision - 1), self.op_timeout,
                               f"write {self.path}")
                written = stat.version + 1
        except (BadVersionError, NodeExistsError, NoNodeError):
            with self._lock:
                self._kept = None  # someone else wrote first: the retry reads ZooKeeper
            return None
        with self._lock:
            if self._on_change is not None and (self._kept is None or self._kept[1] < written):
                self._kept = (state, written)
            self._seen = max(self._seen, written)  # our own write is no news to us
        return written

    def watch(self, on_change: Callable[[], None]) -> None:
        from kazoo.recipe.watchers import DataWatch

        self._on_change = on_change
        # DataWatch re-arms itself after every change and across reconnects and session loss;
        # registering it needs the connection, so it is done off the caller's thread.
        threading.Thread(target=DataWatch, args=(self.client, self.path, self._on_data), daemon=True,
                         name="zk-datawatch").start()

    def _on_data(self, data, stat, event=None) -> bool | None:
        """kazoo's DataWatch callback (its own thread): keep the state, tell the model if it is news."""
        if self._closed:
            return False  # stop watching
        revision = stat.version + 1 if stat is not None else 0
        with self._lock:
            if self._kept is not None and revision < self._kept[1]:
                return None  # an answer older than what we hold
            self._kept = (_decode(data, self.path), revision)
            news = revision > self._seen
            self._seen = max(self._seen, revision)
        callback = self._on_change
        if news and callback is not None:
            try:
                callback()
            except Exception:
                log.exception("routing change handler failed for %s", self.path)
        return None

    def poll(self) -> None:
        """Nothing to do: ZooKeeper pushes changes to the watch."""

    def close(self) -> None:
        self._closed = True
        self._on_change = None
        with self._lock:
            self._kept = None
