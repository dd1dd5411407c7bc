"""This replica as a member of its fleet.

It connects to ZooKeeper before the manager exists (a replica must learn the fleet's serving
version before it serves anything), hands every model a ZooKeeper routing store, and keeps
an ephemeral znode under `<root>/members/` current: id, REST and gRPC addresses, readiness,
draining, requests in flight, and per model the serving version (and since when), the routed
versions, each known version's state and the failures with their reasons. The znode's
content comes from the event bus (cluster/report.py); one writer thread coalesces changes into
writes, so the publisher's thread only folds an event into a dict.

ZooKeeper going away never stops serving: writes are retried in the background, the znode is
registered again after a session loss, and the routing stores keep the last state they read.

Two fleet duties live here too. While the fleet has no serving version for a model, replicas
prepare versions and serve none; the first replica to have one ready proposes it (compare-
and-set: one proposal wins, every replica adopts it by watch), so a new fleet needs no manual
first rollout and never starts with replicas serving different versions. With
`--fleet_auto_rollout`, a version newer than any the fleet rolled out that becomes AVAILABLE
here (prepared, not routed) starts a two-phase rollout of it from this replica.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from typing import Callable

from hotserve.cluster import zk
from hotserve.cluster.report import KINDS, ReplicaReport
from hotserve.cluster.rollout import Rollout, RolloutOptions
from hotserve.cluster.routing_store import ZkRoutingStore
from hotserve.core.config import ModelConfig
from hotserve.observability.events import BUS, EventBus, FleetMembership, FleetRollout, Record, VersionStateChanged
from hotserve.repository.routing_store import RoutingState

log = logging.getLogger("hotserve.fleet")

# In-flight counts change without events; they are re-reported this often when they changed.
LOAD_REPORT_SECONDS = 2.0
_RETRY_SECONDS = 0.5


def default_replica_id(rest_port: int, worker_id: int | None = None) -> str:
    """hostname-port (a pod's hostname is its name; on one machine the port tells replicas apart)."""
    return f"{socket.gethostname()}-{rest_port}" + (f"-w{worker_id}" if worker_id is not None else "")


class FleetMember:
    def __init__(self, url: str, bus: EventBus = BUS, auto_rollout: bool = False,
                 connect_timeout: float = zk.CONNECT_TIMEOUT_SECONDS) -> None:
        self.address = zk.FleetAddress.parse(url)
        self.bus = bus
        self.auto_rollout = auto_rollout
        self.client = zk.connect(self.address, connect_timeout)
        self.replica_id = ""
        self.report = ReplicaReport()
        self._cv = threading.Condition()
        self._dirty = False
        self._stopping = False
        self._draining = False
        self._registered = False  # our ephemeral znode exists in the current session
        self._fields: dict = {}
        self._ready: Callable[[], bool] = lambda: False
        self._in_flight: Callable[[], int] = lambda: 0
        self._manager = None
        self._first_target: dict[str, int] = {}  # model -> version to propose as the fleet's first
        self._settled: set[str] = set()  # models the fleet has a serving version for
        self._auto: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._roller: threading.Thread | None = None
        # Subscribed before the manager exists, so no event of its start is missed.
        self._unsubscribe = bus.subscribe(self._on_event)
        self.client.add_listener(self._on_connection)

    # -- wiring ----------------------------------------------------------------------------------
    def routing_store(self, config: ModelConfig) -> ZkRoutingStore:
        """The RoutingStore for one model (Manager's store_factory)."""
        return ZkRoutingStore(self.client, self.address.routing(config.name))

    def start(self, manager, ready: Callable[[], bool], in_flight: Callable[[], int], replica_id: str) -> None:
        """Register this replica's znode (addresses unknown yet: its ports open once it is ready)
        and keep it current; `manager` is core's Manager (auto rollout reads its models' fleet
        version)."""
        self.replica_id = replica_id
        self._manager = manager
        self._ready = ready
        self._in_flight = in_flight
        self._fields = {"id": replica_id, "host": socket.gethostname(), "pid": os.getpid(), "rest": None,
                        "grpc": None, "started": time.time()}
        self._writer = threading.Thread(target=self._write_loop, name="fleet-member", daemon=True)
        self._writer.start()
        if self.auto_rollout:
            self._roller = threading.Thread(target=self._auto_loop, name="fleet-auto-rollout", daemon=True)
            self._roller.start()
        self._mark()

    def set_addresses(self, rest_url: str, grpc_target: str) -> None:
        """The ports are open: where balancers and `hotserve fleet status` reach this replica."""
        self._fields = {**self._fields, "rest": rest_url, "grpc": grpc_target}
        self._mark()

    def set_draining(self) -> None:
        """Report not ready and draining at once (SIGTERM)."""
        self._draining = True
        self._mark()

    def close(self, timeout: float = 5.0) -> None:
        """Deregister (delete the znode) and disconnect."""
        from kazoo.exceptions import NoNodeError

        self._unsubscribe()
        self.client.remove_listener(self._on_connection)  # our own disconnect is not news
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._auto.put(None)
        if self._writer is not None:
            self._writer.join(timeout)
        if self.replica_id and self.client.connected:
            try:
                zk.call(self.client.delete_async(self.address.member(self.replica_id)), timeout, "deregister")
                self.bus.publish(FleetMembership("", self.replica_id, "deregistered"))
            except (NoNodeError, zk.FleetUnavailable) as exc:
                log.info("fleet: could not delete %s at shutdown (%s); it expires with the session",
                         self.address.member(self.replica_id), exc)
        zk.close(self.client)

    # -- events (publisher's thread: quick) ------------------------------------------------------------
    def _on_event(self, record: Record) -> None:
        if record.event.kind not in KINDS:
            return
        self.report.apply(record)
        ev = record.event
        if isinstance(ev, VersionStateChanged) and ev.state == "AVAILABLE":
            if ev.model not in self._settled:
                # Prepared here while the fleet may have no version yet: the newest is the proposal.
                self._first_target[ev.model] = max(ev.version, self._first_target.get(ev.model, ev.version))
            if self.auto_rollout:
                self._auto.put((ev.model, ev.version))
        self._mark()

    def _on_connection(self, state: str) -> None:
        """kazoo's connection listener (its connection thread: quick)."""
        if state == "LOST":
            self._registered = False  # the session and its ephemeral znode are gone
        if self.replica_id:
            self.bus.publish(FleetMembership("", self.replica_id, state.lower(),
                                             {"SUSPENDED": "ZooKeeper unreachable; serving continues",
                                              "LOST": "session expired; will register again on reconnect",
                                              "CONNECTED": ""}.get(state, "")))
        self._mark()

    def _mark(self) -> None:
        with self._cv:
            self._dirty = True
            self._cv.notify_all()

    # -- the writer thread --------------------------------------------------------------------------------
    def _doc(self) -> dict:
        return {**self._fields, "ready": bool(self._ready()) and not self._draining, "draining": self._draining,
                "in_flight": int(self._in_flight()), "models": self.report.doc()}

    def _write_loop(self) -> None:
        last: dict | None = None
        while True:
            with self._cv:
                if not self._dirty and not self._stopping:
                    self._cv.wait(LOAD_REPORT_SECONDS)
                if self._stopping:
                    return
                self._dirty = False
            try:
                self._propose_first_targets()
                doc = self._doc()
                if doc != last or not self._registered:
                    self._write(doc)
                    last = doc
            except zk.FleetUnavailable as exc:
                log.debug("fleet: member write deferred: %s", exc)
                with self._cv:
                    self._dirty = True
                    self._cv.wait(_RETRY_SECONDS)
            except Exception:
                log.exception("fleet: member write failed")
                with self._cv:
                    self._dirty = True
                    self._cv.wait(_RETRY_SECONDS)

    def _write(self, doc: dict) -> None:
        from kazoo.exceptions import NodeExistsError, NoNodeError

        path = self.address.member(self.replica_id)
        data = zk.dumps({**doc, "updated": time.time()})
        if self._registered:
            try:
                zk.call(self.client.set_async(path, data), what="update member")
                return
            except NoNodeError:
                self._registered = False
        try:
            zk.call(self.client.create_async(path, data, ephemeral=True, makepath=True), what="register member")
        except NodeExistsError:
            # Ours from this session (a reconnect), or a previous process's with the same id whose
            # session has not expired yet: that one would vanish with its session, so replace it.
            _, stat = zk.call(self.client.get_async(path), what="read member")
            session = self.client.client_id
            if session is None or stat.ephemeralOwner != session[0]:
                try:
                    zk.call(self.client.delete_async(path, version=stat.version), what="replace stale member")
                except NoNodeError:
                    pass
                zk.call(self.client.create_async(path, data, ephemeral=True, makepath=True), what="register member")
            else:
                zk.call(self.client.set_async(path, data), what="update member")
        self._registered = True
        self.bus.publish(FleetMembership("", self.replica_id, "registered", f"{self.address.url} as {path}"))

    def _propose_first_targets(self) -> None:
        """A model the fleet has no serving version for yet: propose what this replica serves.
        Compare-and-set, so of replicas proposing at once one wins and all adopt it by watch."""
        for model, version in list(self._first_target.items()):
            store = ZkRoutingStore(self.client, self.address.routing(model))
            state, revision = store.read()
            if state is None or state.fleet_target is None:
                proposed = (state or RoutingState()).with_changes(fleet_target=version)
                if store.compare_and_set(proposed, revision) is None:
                    continue  # someone wrote meanwhile: look again on the next round
                log.info("fleet: model %s had no fleet version; proposed version %d (what this replica serves)",
                         model, version)
            self._first_target.pop(model, None)
            self._settled.add(model)

    # -- auto rollout -------------------------------------------------------------------------------------
    def _auto_loop(self) -> None:
        while True:
            item = self._auto.get()
            if item is None:
                return
            model, version = item
            manager = self._manager
            mm = manager.models.get(model) if manager is not None else None
            target = mm.intent.state.fleet_target if mm is not None else None
            if target is None or version <= target:
                continue  # not new (or the fleet has no version yet: the first one is proposed, not rolled out)

            def say(line: str, model=model, version=version) -> None:
                self.bus.publish(FleetRollout(model, version, "progress", line.strip()))

            try:
                result = Rollout(self.client, self.address, model, RolloutOptions(only_if_newer=True), say,
                                 who=f"{self.replica_id} (auto)").run(version)
            except zk.FleetUnavailable as exc:
                self.bus.publish(FleetRollout(model, version, "aborted", f"ZooKeeper unavailable: {exc}"))
                continue
            except Exception as exc:
                log.exception("fleet: auto rollout of %s version %d failed", model, version)
                self.bus.publish(FleetRollout(model, version, "aborted", repr(exc)))
                continue
            self.bus.publish(FleetRollout(model, version, result.outcome, result.message))
