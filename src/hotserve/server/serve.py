"""The server process: manager + REST front end on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hotserve.core.config import ModelConfig
from hotserve.core.config_watcher import ConfigFileWatcher
from hotserve.core.manager import Manager, ManagerOptions
from hotserve.observability import events, live, metrics, tracing
from hotserve.protocols import limits, tfserving_rest
from hotserve.server.admission import AdmissionOptions
from hotserve.server.context import build_context
from hotserve.server.dashboard import local_feed
from hotserve.server.grpc_h2 import H2GrpcServer
from hotserve.server.http import HttpServer, Limits
from hotserve.server.instrument import instrument, worker_state
from hotserve.server.peers import PeerServer, from_env
from hotserve.server.rest import RestApp
from hotserve.server.sockets import bind_socket

if TYPE_CHECKING:
    from hotserve.server.grpc_server import GrpcServer

log = logging.getLogger("hotserve.server")


@dataclass
class ServeOptions:
    models: list[ModelConfig]
    manager: ManagerOptions = field(default_factory=ManagerOptions)
    host: str = "0.0.0.0"
    rest_api_port: int = 8501
    grpc_port: int = 8500
    grpc_frontend: str = "native"  # native (server/grpc_h2.py) | grpcio (grpc.aio)
    rest_api_timeout_seconds: float = 30.0
    reuse_port: bool = False
    worker_id: int | None = None  # set in --num_workers mode
    config_file: str | None = None
    config_poll_seconds: float = 0.0
    admin_token: str | None = None
    reload_timeout_seconds: float = 60.0
    http_limits: Limits = field(default_factory=Limits)
    admission: AdmissionOptions = field(default_factory=AdmissionOptions)
    max_request_tensor_bytes: int = 256 << 20
    serving_shape: dict = field(default_factory=dict)  # what server/shape.py chose, shown in model metadata
    # Continuous learning: a feedback store (--learning_dir's SQLite file, or --feedback_store).
    feedback_store: str | None = None
    feedback_retention: object | None = None  # learning.store.Retention
    prediction_log_queue: int = 10_000
    parameter_guard: tuple[float, int] | None = None  # (margin, examples): revert deltas that make the metric worse
    otel_endpoint: str | None = None  # --otel_exporter_otlp_endpoint (tracing also follows OTEL_* variables)
    # --fleet zk://host:port/path: membership, routing intent and rollouts through ZooKeeper.
    fleet: str | None = None
    fleet_auto_rollout: bool = False
    fleet_replica_id: str | None = None
    # On SIGTERM: fail readiness, keep serving this long, then stop accepting and finish.
    drain_seconds: float = 0.0


def _announce(line: str) -> None:
    """One line on stdout in one write: tools parse it, and a log line (stderr, often the same
    file) or a sibling worker's line must never land inside it."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (line + "\n").encode())


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(opts: ServeOptions) -> None:
    # Management calls (labels, loads, reloads) wait in these threads; model requests run in
    # their model's own lane (server/admission.py).
    executor = ThreadPoolExecutor(4, thread_name_prefix="mgmt")
    limits.configure(opts.max_request_tensor_bytes, opts.http_limits.max_body_bytes)
    tracing.configure(opts.otel_endpoint, str(opts.worker_id) if opts.worker_id is not None else None)
    metrics.subscribe(events.BUS)
    events.subscribe_logging(events.BUS, logging.getLogger("hotserve.manager"))
    loop = asyncio.get_running_loop()
    member = None
    if opts.fleet:
        from hotserve.cluster.member import FleetMember

        # Before the manager: a replica learns the fleet's serving versions before it serves.
        member = await loop.run_in_executor(None, lambda: FleetMember(opts.fleet, events.BUS, opts.fleet_auto_rollout))
        opts.manager = dataclasses.replace(opts.manager, fleet=True)
    # warmup.json and golden.json hold TF Serving REST predict bodies: the REST decoder reads them.
    manager = Manager(opts.models, opts.manager, decoder=tfserving_rest,
                      store_factory=member.routing_store if member is not None else None)
    worker = str(opts.worker_id) if opts.worker_id is not None else "0"
    metrics.WORKER = str(opts.worker_id) if opts.worker_id is not None else ""
    live.TICKER.start()
    peers = from_env(opts.worker_id)
    peer_server = None
    if peers is not None:
        # Siblings see this worker (loading, too) on their metrics and dashboards from now on.
        peer_closing = asyncio.Event()
        peer_server = PeerServer(peers.directory, worker, lambda: worker_state(manager, worker),
                                 lambda after: local_feed(lambda: worker_state(manager, worker), worker, after,
                                                          closing=peer_closing))
        await peer_server.start()
    # A --num_workers worker, and a fleet replica, open their ports only once their models are
    # ready (a replica: serving the fleet's version), so neither the kernel's port sharing nor
    # a balancer without health checks (nginx) hands them a request they cannot answer yet.
    defer = opts.worker_id is not None or member is not None
    sock = bind_socket(opts.host, opts.rest_api_port, opts.reuse_port, listen=not defer)
    host, port = sock.getsockname()[:2]
    watcher = ConfigFileWatcher(opts.config_file, manager, opts.config_poll_seconds,
                                opts.reload_timeout_seconds) if opts.config_file else None
    ctx = build_context(manager, executor, opts.admin_token, opts.rest_api_timeout_seconds,
                        opts.reload_timeout_seconds, watcher.reload_now if watcher else None, opts.admission)
    ctx.worker, ctx.peers, ctx.serving_shape = worker, peers, opts.serving_shape
    instrument(manager, ctx.frame.lanes, worker)
    learning = _start_learning(opts, manager, ctx)
    app = RestApp(ctx)
    rest = HttpServer(app, opts.http_limits, lambda status, message: tfserving_rest.encode_error(message),
                      lambda reason: metrics.limit_rejected("", reason))
    if opts.grpc_frontend == "native":
        grpc_server = H2GrpcServer(ctx, opts.host, opts.grpc_port, reuse_port=opts.reuse_port)
    else:  # imported only when asked for: grpcio is 8.5 MiB of every worker's memory
        from hotserve.server.grpc_server import GrpcServer

        grpc_server = GrpcServer(ctx, opts.host, opts.grpc_port, reuse_port=opts.reuse_port)
    shutdown = _Shutdown(ctx, app, rest, grpc_server, opts.drain_seconds, member,
                         grace=max(5.0, opts.rest_api_timeout_seconds))
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, shutdown.signal)
    started = False
    try:
        if member is not None:
            replica_id = opts.fleet_replica_id or _default_replica_id(port, opts.worker_id)
            if opts.fleet_replica_id and opts.worker_id is not None:
                replica_id += f"-w{opts.worker_id}"  # --num_workers: each worker is a member of its own
            member.start(manager, ctx.ready, lambda: sum(_in_flight(manager).values()), replica_id)
        if defer:
            manager.start()
            started = True
            if not await _until_ready(manager, shutdown, None if member is not None else 300.0, opts.worker_id):
                return  # stopped before it was ready
        grpc_port = await grpc_server.start()
        if not started:
            manager.start()
            started = True
        if member is not None:
            advertised = _url_host(_advertised_host(opts.host))
            member.set_addresses(f"http://{advertised}:{port}", f"{advertised}:{grpc_port}")
        if watcher is not None:
            watcher.start()
        if not opts.admin_token:
            log.info("management API off (no --admin_token): labels, rollback, load/unload and config reload are refused")
        await rest.start(sock)  # listens (a deferred socket too) before the line below: readers may connect at once
        # Tools and tests read these lines to learn the bound ports (they matter with port 0).
        _announce(f"hotserve: gRPC API listening on {_url_host(host)}:{grpc_port}")
        _announce(f"hotserve: REST API listening on http://{_url_host(host)}:{port}")
        await shutdown.stopped()
    finally:
        log.info("shutting down: finishing in-flight requests and unloading models")
        app.close()
        if peer_server is not None:
            peer_closing.set()
            await peer_server.stop()
        if watcher is not None:
            watcher.stop()
        await shutdown.front_ends_stopped()
        sock.close()
        if learning is not None:
            await loop.run_in_executor(None, learning.stop)
        if started:
            await loop.run_in_executor(None, manager.stop)
        if member is not None:
            await loop.run_in_executor(None, member.close)  # deregister last: nothing is in flight now
        executor.shutdown(wait=False, cancel_futures=True)
        ctx.frame.lanes.shutdown()
        await loop.run_in_executor(None, tracing.shutdown)


async def _until_ready(manager: Manager, shutdown: "_Shutdown", cap: float | None, worker_id: int | None) -> bool:
    """Wait for every model to be ready; False if a signal came first. With a cap (workers),
    give up waiting after it and open the ports anyway."""
    loop = asyncio.get_running_loop()
    start = next_note = loop.time()
    while not manager.ready():
        if shutdown.requested:
            return False
        now = loop.time()
        if cap is not None and now - start > cap:
            log.warning("worker %s: models not ready after %gs; joining the port anyway", worker_id, cap)
            return True
        if now >= next_note + 30:
            next_note = now
            log.info("ports stay closed until every model is ready (%.0fs so far)", now - start)
        await asyncio.sleep(0.05)
    return True


class _Shutdown:
    """SIGTERM/SIGINT: readiness fails at once (/readyz, gRPC health, the fleet member), requests
    are still served for --drain_seconds so balancers stop sending (every answer meanwhile
    closes its connection), then both front ends stop accepting together and finish what is in
    flight. A second signal cuts the drain short."""

    def __init__(self, ctx, app: RestApp, rest: HttpServer, grpc_server: H2GrpcServer | GrpcServer, drain_seconds: float, member,
                 grace: float) -> None:
        self.ctx = ctx
        self.app = app
        self.rest = rest
        self.grpc_server = grpc_server
        self.drain_seconds = drain_seconds
        self.member = member
        self.grace = grace
        self._cut = asyncio.Event()
        self._accepting_stopped = asyncio.Event()
        self._drain: asyncio.Task | None = None
        self._stops: asyncio.Future | None = None

    @property
    def requested(self) -> bool:
        return self._drain is not None

    def signal(self) -> None:
        if self._drain is not None:
            self._cut.set()
            return
        self._drain = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        self.ctx.draining = True
        events.BUS.publish(events.Draining(seconds=self.drain_seconds))
        if self.member is not None:
            self.member.set_draining()
        if self.drain_seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._cut.wait(), self.drain_seconds)
        self.app.close()  # open dashboard streams end, so their connections can close
        self._stops = asyncio.gather(self.rest.stop(self.grace), self.grpc_server.stop(self.grace))
        self._accepting_stopped.set()

    async def stopped(self) -> None:
        """Return once a signal stopped the front ends from accepting."""
        await self._accepting_stopped.wait()

    async def front_ends_stopped(self) -> None:
        """Both front ends stopped and finished their in-flight requests (also without a signal)."""
        if self._drain is not None:
            await self._drain
        if self._stops is None:  # ended without a signal (e.g. a front end failed to start)
            self._stops = asyncio.gather(self.rest.stop(self.grace), self.grpc_server.stop(self.grace))
        await self._stops


def _in_flight(manager: Manager) -> dict[str, int]:
    """Requests bound to a version and not finished yet, per model (summed refcounts)."""
    return {name: sum(lv.in_flight for lv in mm.loaded()) for name, mm in list(manager.models.items())}


def _advertised_host(host: str) -> str:
    """The address other machines reach this replica at (the fleet status table shows it)."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    return os.environ.get("HOTSERVE_ADVERTISE_HOST") or socket.gethostname()


def _default_replica_id(port: int, worker_id: int | None) -> str:
    from hotserve.cluster.member import default_replica_id

    return default_replica_id(port, worker_id)


def _start_learning(opts: ServeOptions, manager: Manager, ctx):
    """The prediction log (a frame observer) and the feedback API, when a store is configured."""
    if not opts.feedback_store:
        return None
    from hotserve.learning.service import LearningService
    from hotserve.learning.stores import open_store

    service = LearningService(manager, open_store(opts.feedback_store, opts.feedback_retention),
                              queue_capacity=opts.prediction_log_queue).start()
    ctx.learning = service
    ctx.frame.observers.append(service.log)
    ctx.frame.wants_id = service.log.wants_id
    log.info("continuous learning on: feedback store %s", service.store.url)
    if opts.parameter_guard is not None and opts.worker_id in (None, 0):  # one guard per server: its rollback is logged
        from hotserve.learning.guard import DeltaGuard

        service.guard = DeltaGuard(manager, service.store, *opts.parameter_guard).start()
    return service


def run(opts: ServeOptions) -> int:
    try:
        import uvloop

        uvloop.run(serve(opts))
    except ImportError:
        asyncio.run(serve(opts))
    return 0
