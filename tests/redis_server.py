"""A real redis-server (the Debian package) on a free loopback port, started and stopped by tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from hotserve.launcher import free_port, stop_process  # noqa: F401  (fixtures import free_port from here)


class RedisServer:
    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; scripts/install_system_deps.sh)")
        import redis

        for _ in range(5):  # a port taken between picking and binding: pick again
            self.port = free_port()
            # appendfsync always: Redis fsyncs before it answers, so a feedback 200 is durable.
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.workdir, "--save", "",
                 "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    client.ping()
                    client.close()
                    return self
                except redis.ConnectionError:
                    time.sleep(0.02)
            self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
