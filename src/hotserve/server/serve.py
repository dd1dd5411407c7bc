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
from hotserve.protocols import tfserving_rest
from hotserve.server.context import build_context
from hotserve.server.grpc_server import GrpcServer
from hotserve.server.dashboard import local_feed
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
    rest_api_num_threads: int = 0  # 0: 4 x cores, like TF Serving
    rest_api_timeout_seconds: float = 30.0
    reuse_port: bool = False
    worker_id: int | None = None  # set in --num_workers mode
    config_file: str | None = None
    config_poll_seconds: float = 0.0
    admin_token: str | None = None
    reload_timeout_seconds: float = 60.0
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


class _Uvicorn:
    """uvicorn's Server without its own signal capture: this process owns SIGINT/SIGTERM."""

    def __init__(self, app, sock: socket.socket) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, http="httptools", lifespan="off", access_log=False, log_config=None,
            timeout_keep_alive=30, backlog=2048,
        )

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                yield

        self.server = Server(config)
        self.sock = sock

    async def serve(self) -> None:
        await self.server.serve(sockets=[self.sock])

    def stop(self) -> None:
        self.server.should_exit = True


async def serve(opts: ServeOptions) -> None:
    threads = opts.rest_api_num_threads or 4 * (os.cpu_count() or 1)
    batch_sizes = [m.batching.max_batch_size for m in opts.models if hasattr(m.batching, "max_batch_size")]
    if opts.manager.batching is not None:
        batch_sizes.append(opts.manager.batching.max_batch_size)
    if batch_sizes and not opts.rest_api_num_threads:
        # A request waits for its batch in a worker thread: enough threads to fill two batches.
        threads = max(threads, min(1024, 2 * max(batch_sizes)))
    tracing.configure(opts.otel_endpoint, str(opts.worker_id) if opts.worker_id is not None else None)
    executor = ThreadPoolExecutor(threads, thread_name_prefix="rest")
    metrics.subscribe(events.BUS)
    events.subscribe_logging(events.BUS, logging.getLogger("hotserve.manager"))
    # warmup.json and golden.json hold TF Serving REST predict bodies: the REST decoder reads them.
    manager = Manager(opts.models, opts.manager, decoder=tfserving_rest)
    worker = str(opts.worker_id) if opts.worker_id is not None else "0"
    metrics.WORKER = str(opts.worker_id) if opts.worker_id is not None else ""
    instrument(manager, executor, worker)
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
                        opts.reload_timeout_seconds, watcher.reload_now if watcher else None)
    ctx.worker, ctx.peers = worker, peers
    app = RestApp(ctx)
    rest = _Uvicorn(app, sock)

    def stop() -> None:
        app.close()
        rest.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
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
        await rest.serve()
    finally:
        log.info("shutting down: draining in-flight requests and unloading models")
        app.close()
        if peer_server is not None:
            peer_closing.set()
            await peer_server.stop()
        if watcher is not None:
            watcher.stop()
        await grpc_server.stop()
        await loop.run_in_executor(None, manager.stop)
        executor.shutdown(wait=False, cancel_futures=True)
        await loop.run_in_executor(None, tracing.shutdown)


def run(opts: ServeOptions) -> int:
    try:
        import uvloop

        uvloop.run(serve(opts))
    except ImportError:
        asyncio.run(serve(opts))
    return 0
