"""--num_workers: several hotserve processes serving the same ports.

The supervisor reserves the REST and gRPC ports (bound, not listening, SO_REUSEPORT) and
starts N workers with `--reuse_port`; each worker is a complete server (manager, watcher,
front ends) that joins the port's accept group only once its models are ready, so the kernel
never hands a connection to a worker that cannot answer it yet. Every worker watches the
repository itself, so a publish reaches all of them; routing decisions (labels, pins,
rollbacks, canary verdicts from worker 0) travel through the repository's routing state file.
Workers reach each other over unix sockets in a private directory (server/peers.py) so that a
metrics scrape or the dashboard, answered by one worker, shows them all.
A worker that dies is restarted; SIGTERM/SIGINT stop them all, draining in-flight requests.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from hotserve.observability.process import rss_of
from hotserve import envvars
from hotserve.server.sockets import bind_socket

log = logging.getLogger("hotserve.workers")

# A worker that exits sooner than this after starting is crashing at start: back off.
_MIN_UPTIME = 10.0
_RSS_REPORT_SECONDS = 60.0


def _strip(argv: list[str], names: set[str]) -> list[str]:
    """argv without the given flags (and their values), in any spelling."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0].lstrip("-").replace("-", "_")
        if arg.startswith("--") and name in names:
            skip = "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        out.append(arg)
    return out


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM it when the supervisor dies, even by SIGKILL, so no
    worker outlives its supervisor holding the port (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own shutdown still stops them


class Supervisor:
    def __init__(self, argv: list[str], num_workers: int, host: str, rest_port: int, grpc_port: int) -> None:
        self.num_workers = num_workers
        self.host = host
        # Bound, never listening: they only hold the ports for the workers.
        self._rest = bind_socket(host, rest_port, reuse_port=True, listen=False)
        self._grpc = bind_socket(host, grpc_port, reuse_port=True, listen=False)
        self.rest_port = self._rest.getsockname()[1]
        self.grpc_port = self._grpc.getsockname()[1]
        base = _strip(argv, {"num_workers", "rest_api_port", "port", "reuse_port", "worker_id"})
        self._argv = [*base, "--rest_api_port", str(self.rest_port), "--port", str(self.grpc_port), "--reuse_port"]
        self._procs: list[subprocess.Popen | None] = [None] * num_workers
        self._started = [0.0] * num_workers
        self._stopping = threading.Event()
        # Workers answer each other here (server/peers.py): one scrape or dashboard covers all.
        self.peer_dir = tempfile.mkdtemp(prefix="hotserve-peers-")

    def _spawn(self, i: int) -> None:
        cmd = [sys.executable, "-m", "hotserve", "serve", *self._argv, "--worker_id", str(i)]
        self._procs[i] = subprocess.Popen(cmd, preexec_fn=_die_with_parent, env={**os.environ, "HOTSERVE_WORKER_ID": str(i),
                                                        envvars.PEER_DIR: self.peer_dir})
        self._started[i] = time.monotonic()
        log.info("worker %d started (pid %d)", i, self._procs[i].pid)

    def _stop_all(self, *_: object) -> None:
        self._stopping.set()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop_all)
        url_host = f"[{self.host}]" if ":" in self.host else self.host
        log.info("supervising %d workers on REST %s:%d and gRPC %s:%d", self.num_workers, url_host, self.rest_port,
                 url_host, self.grpc_port)
        for i in range(self.num_workers):
            self._spawn(i)
        next_report = time.monotonic() + 1.0
        backoff = [1.0] * self.num_workers
        while not self._stopping.wait(0.2):
            for i, proc in enumerate(self._procs):
                if proc is not None and proc.poll() is not None:
                    quick = time.monotonic() - self._started[i] < _MIN_UPTIME
                    log.error("worker %d (pid %d) exited with %s; restarting%s", i, proc.pid, proc.returncode,
                              f" in {backoff[i]:.0f}s" if quick else "")
                    if quick:
                        if self._stopping.wait(backoff[i]):
                            break
                        backoff[i] = min(backoff[i] * 2, 30.0)
                    else:
                        backoff[i] = 1.0
                    self._spawn(i)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + _RSS_REPORT_SECONDS
                sizes = [f"worker {i}: {rss_of(p.pid) / 2**20:.0f} MiB" for i, p in enumerate(self._procs) if p]
                log.info("memory per worker (RSS): %s", ", ".join(sizes), extra={"event": "worker_memory", "model": ""})
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 40
        for proc in self._procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self._rest.close()
        self._grpc.close()
        shutil.rmtree(self.peer_dir, ignore_errors=True)
        return 0
