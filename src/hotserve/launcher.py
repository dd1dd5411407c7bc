"""Start a hotserve server as a child process and learn its URL; used by the demo, the tests
and the benchmarks so that all of them exercise the real command line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for servers tests start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a child, wait for it, kill it if it will not go: every process a test or a bench
    starts ends this way."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


_LISTENING = re.compile(r"REST API listening on (http://\S+)")
_GRPC_LISTENING = re.compile(r"gRPC API listening on (\S+)")


class ServerProcess:
    def __init__(self, args: list[str], log_path: str, env: dict | None = None, port: int = 0,
                 subcommand: bool = True, prefix: list[str] | None = None) -> None:
        self.args = args
        self.prefix = prefix or []  # e.g. setpriv to drop capabilities
        self.subcommand = subcommand
        self.port = port
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.grpc_target = ""  # host:port for grpc.insecure_channel

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        cmd = [*self.prefix, sys.executable, "-m", "hotserve", *(["serve"] if self.subcommand else []), "--host", "127.0.0.1", "--rest_api_port", str(self.port), "--port", "0", *self.args]
        self._log = open(self.log_path, "wb")  # a fresh log: an old "listening" line must not match
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env or os.environ.copy())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            m = _LISTENING.search(log)
            if m:
                self.url = m.group(1)
                self.grpc_target = _GRPC_LISTENING.search(log).group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"server did not start listening within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise TimeoutError(f"server not ready within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
