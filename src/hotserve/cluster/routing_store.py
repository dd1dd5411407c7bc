"""The routing intent of one model in ZooKeeper: the RoutingStore a fleet's replicas share.

Labels, pins, canary weights, rollbacks and the fleet's serving version written through any
replica (or the rollout CLI) reach every replica at once: a write is compare-and-set on the
znode's version, and each replica holds a kazoo DataWatch that pushes every change (poll is a
no-op). The revision the protocol speaks of is the znode version + 1 (0: no znode yet).

Watch callbacks are handed to one notifier thread per store, so kazoo's event thread never
waits on a replica's reconcile, and a burst of changes coalesces into one adoption.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from hotserve.cluster import zk
from hotserve.repository.routing_store import RoutingState, decode_state, encode_state

log = logging.getLogger("hotserve.fleet")


class ZkRoutingStore:
    def __init__(self, client, path: str, op_timeout: float = zk.OP_TIMEOUT_SECONDS) -> None:
        self.client = client
        self.path = path
        self.op_timeout = op_timeout
        self._on_change: Callable[[], None] | None = None
        self._seen: int | None = None  # the last revision we read or wrote
        self._changed = threading.Event()
        self._closed = False
        self._notifier: threading.Thread | None = None

    def read(self) -> tuple[RoutingState | None, int]:
        from kazoo.exceptions import NoNodeError

        try:
            data, stat = zk.call(self.client.get_async(self.path), self.op_timeout, f"read {self.path}")
        except NoNodeError:
            return None, 0
        revision = stat.version + 1
        self._seen = revision
        if not data:
            return None, revision
        try:
            return decode_state(data)[0], revision
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            log.warning("ignoring unreadable routing state in ZooKeeper %s: %s", self.path, exc)
            return None, revision

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
            return None  # someone else wrote first: re-read and re-apply
        self._seen = written
        return written

    def watch(self, on_change: Callable[[], None]) -> None:
        from kazoo.recipe.watchers import DataWatch

        self._on_change = on_change
        self._notifier = threading.Thread(target=self._notify_loop, name=f"zk-watch{self.path}", daemon=True)
        self._notifier.start()
        # DataWatch re-arms itself after every change and across reconnects and session loss;
        # registering it needs the connection, so it is done off the caller's thread.
        threading.Thread(target=DataWatch, args=(self.client, self.path, self._on_data), daemon=True,
                         name="zk-datawatch").start()

    def _on_data(self, data, stat, event=None) -> bool | None:
        if self._closed:
            return False  # stop watching
        revision = stat.version + 1 if stat is not None else 0
        if revision != self._seen:
            self._changed.set()
        return None

    def _notify_loop(self) -> None:
        while not self._closed:
            self._changed.wait()
            self._changed.clear()
            if self._closed:
                return
            callback = self._on_change
            if callback is None:
                continue
            try:
                callback()
            except Exception:
                log.exception("routing change handler failed for %s", self.path)

    def poll(self) -> None:
        """Nothing to do: ZooKeeper pushes changes to the watch."""

    def close(self) -> None:
        self._closed = True
        self._on_change = None
        self._changed.set()
