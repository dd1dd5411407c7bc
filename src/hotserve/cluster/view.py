"""The live replicas as ZooKeeper holds them: their ephemeral znodes' documents.

`read()` lists the members and reads each one, leaving a one-shot watch on the list and on
every member; any change sets an event, so `wait_until` re-reads only when something changed
(no polling). Used by the rollout (CLI or an auto-rolling replica) and `hotserve fleet status`.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable, TypeVar

from hotserve.cluster import zk

T = TypeVar("T")


class FleetView:
    def __init__(self, client, address: zk.FleetAddress) -> None:
        self.client = client
        self.address = address
        self._changed = threading.Event()

    def _signal(self, event=None) -> None:
        self._changed.set()

    def read(self) -> dict[str, dict]:
        """{replica id: its document} for every live replica (a member that vanishes mid-read is skipped)."""
        from kazoo.exceptions import NoNodeError

        try:
            names = zk.call(self.client.get_children_async(self.address.members, watch=self._signal), what="list members")
        except NoNodeError:
            zk.call(self.client.ensure_path_async(self.address.members), what="create the members node")
            names = zk.call(self.client.get_children_async(self.address.members, watch=self._signal),
                            what="list members")
        pending = {n: self.client.get_async(f"{self.address.members}/{n}", watch=self._signal) for n in names}
        members: dict[str, dict] = {}
        for name, result in pending.items():
            try:
                data, _ = zk.call(result, what=f"read member {name}")
            except NoNodeError:
                continue
            try:
                doc = json.loads(data)
            except ValueError:
                continue
            if isinstance(doc, dict):
                members[str(doc.get("id", name))] = doc
        return members

    def wait_until(self, check: Callable[[dict[str, dict]], T | None], timeout: float) -> tuple[T | None, dict[str, dict]]:
        """Re-read on every change until check(members) returns something other than None, or
        timeout; returns (that result or None, the last members read)."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()  # before reading: a change during the read wakes the next wait
            members = self.read()
            result = check(members)
            remaining = deadline - time.monotonic()
            if result is not None or remaining <= 0:
                return result, members
            self._changed.wait(min(remaining, 5.0))  # 5 s: a lost watch costs at most that
