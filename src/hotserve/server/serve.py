"""The server process: manager + REST front end on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hotserve.core.config import ModelConfig
from hotserve.core.config_watcher import ConfigFileWatcher
from hotserve.core.manager import Manager, ManagerOptions
from hotserve.observability import events, live, metrics, tracing
from hotserve.protocols import limits, tfserving_rest
from hotserve.server.admission import AdmissionOptions
from hotserve.server.context import build_context
from hotserve.server.dashboard import local_feed
from hotserve.server.grpc_server import GrpcServer
from hotserve.server.http import HttpServer, Limits
from hotserve.server.instrument import instrument, worker_state
from hotserve.server.peers import PeerServer, from_env
from hotserve.server.rest import RestApp

log = logging.getLogger("hotserve.server")


@dataclass
class ServeOptions:
    models: list[ModelConfig]
    manager: ManagerOptions = field(default_factory=ManagerOptions)
    host: str = "0.0.0.0"
    rest_api_port: int = 8501
    grpc_port: int = 8500
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
    # Continuous learning: a feedback store (--learning_dir's SQLite file, or --feedback_store).
    feedback_store: str | None = None
    feedback_retention: object | None = None  # learning.store.Retention
    prediction_log_queue: int = 10_000
    otel_endpoint: str | None = None  # --otel_exporter_otlp_endpoint (tracing also follows OTEL_* variables)


def bind_socket(host: str, port: int, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A bound socket; with listen=False it only holds the port (the --num_workers supervisor)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        # Several worker processes listen on one port; the kernel spreads connections.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    if listen:
        sock.listen(2048)
        sock.setblocking(False)
    return sock


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
    # warmup.json and golden.json hold TF Serving REST predict bodies: the REST decoder reads them.
    manager = Manager(opts.models, opts.manager, decoder=tfserving_rest)
    worker = str(opts.worker_id) if opts.worker_id is not None else "0"
    metrics.WORKER = str(opts.worker_id) if opts.worker_id is not None else ""
    live.TICKER.start()
    loop = asyncio.get_running_loop()
    peers = from_env(opts.worker_id)
    peer_server = None
    if peers is not None:
        # Siblings see this worker (loading, too) on their metrics and dashboards from now on.
        peer_closing = asyncio.Event()
        peer_server = PeerServer(peers.directory, worker, lambda: worker_state(manager, worker),
                                 lambda after: local_feed(lambda: worker_state(manager, worker), worker, after,
                                                          closing=peer_closing))
        await peer_server.start()
    if opts.worker_id is not None:
        # A worker joins the shared port only once it can answer, so the kernel never routes a
        # connection to a worker still loading its models.
        manager.start()
        deadline = loop.time() + 300
        while not manager.ready() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if not manager.ready():
            log.warning("worker %d: models not ready after 300s; joining the port anyway", opts.worker_id)
    sock = bind_socket(opts.host, opts.rest_api_port, opts.reuse_port)
    host, port = sock.getsockname()[:2]
    watcher = ConfigFileWatcher(opts.config_file, manager, opts.config_poll_seconds,
                                opts.reload_timeout_seconds) if opts.config_file else None
    ctx = build_context(manager, executor, opts.admin_token, opts.rest_api_timeout_seconds,
                        opts.reload_timeout_seconds, watcher.reload_now if watcher else None, opts.admission)
    ctx.worker, ctx.peers = worker, peers
    instrument(manager, ctx.frame.lanes, worker)
    learning = _start_learning(opts, manager, ctx)
    app = RestApp(ctx)
    rest = HttpServer(app, opts.http_limits, lambda status, message: tfserving_rest.encode_error(message),
                      lambda reason: metrics.limit_rejected("", reason))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    grpc_server = GrpcServer(ctx, opts.host, opts.grpc_port, reuse_port=opts.reuse_port)
    try:
        grpc_port = await grpc_server.start()
    except BaseException:
        sock.close()
        raise
    if opts.worker_id is None:
        manager.start()
    if watcher is not None:
        watcher.start()
    if not opts.admin_token:
        log.info("management API off (no --admin_token): labels, rollback, load/unload and config reload are refused")
    # Tools and tests read these lines to learn the bound ports (they matter with port 0).
    print(f"hotserve: gRPC API listening on {_url_host(host)}:{grpc_port}", flush=True)
    print(f"hotserve: REST API listening on http://{_url_host(host)}:{port}", flush=True)
    try:
        await rest.start(sock)
        await stop.wait()
    finally:
        log.info("shutting down: draining in-flight requests and unloading models")
        app.close()
        if peer_server is not None:
            peer_closing.set()
            await peer_server.stop()
        if watcher is not None:
            watcher.stop()
        await asyncio.gather(rest.stop(), grpc_server.stop())
        if learning is not None:
            await loop.run_in_executor(None, learning.stop)
        await loop.run_in_executor(None, manager.stop)
        executor.shutdown(wait=False, cancel_futures=True)
        ctx.frame.lanes.shutdown()
        await loop.run_in_executor(None, tracing.shutdown)


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
    return service


def run(opts: ServeOptions) -> int:
    try:
        import uvloop

        uvloop.run(serve(opts))
    except ImportError:
        asyncio.run(serve(opts))
    return 0
