"""ZooKeeper and nginx as child processes on 127.0.0.1: what the fleet tests and bench/fleet.py
run (and a one-machine fleet for trying it out). Debian's packages: `zookeeper` (OpenJDK) and
`nginx`; scripts/install_system_deps.sh installs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from hotserve.cluster import nginx as nginx_config
from hotserve.cluster import zk

ZOOKEEPER_CLASSPATH = "/usr/share/java/*"  # Debian's zookeeper package puts its jars here


from hotserve.launcher import free_port, stop_process as _stop  # noqa: E402,F401  (free_port: tests import it here)


class LocalZooKeeper:
    """A standalone ZooKeeper server: temp data dir, client port on 127.0.0.1, no admin server."""

    def __init__(self, workdir: str, port: int = 0, java: str = "java", classpath: str = ZOOKEEPER_CLASSPATH) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.java = java
        self.classpath = classpath
        self.proc: subprocess.Popen | None = None
        self._log = None

    def url(self, path: str) -> str:
        return f"zk://127.0.0.1:{self.port}/{path.strip('/')}"

    def start(self, timeout: float = 30.0) -> "LocalZooKeeper":
        data = os.path.join(self.workdir, "data")
        os.makedirs(data, exist_ok=True)
        cfg = os.path.join(self.workdir, "zoo.cfg")
        with open(cfg, "w") as f:
            f.write(f"tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={data}\nclientPort={self.port}\n"
                    "clientPortAddress=127.0.0.1\nadmin.enableServer=false\nmaxClientCnxns=0\n"
                    # Sessions may be as short as 1 s (tickTime x 2): tests of session loss stay quick.
                    "minSessionTimeout=1000\n"
                    # A throwaway server in a temp dir: no fsync per write (a busy disk would
                    # stall every write, flips included, by its fsync time).
                    "forceSync=no\n")
        self._log = open(os.path.join(self.workdir, "zookeeper.log"), "ab")
        self.proc = subprocess.Popen(
            [self.java, "-Xmx256m", "-cp", self.classpath, "org.apache.zookeeper.server.quorum.QuorumPeerMain", cfg],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)
        address = zk.FleetAddress.parse(self.url("probe"))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited with {self.proc.returncode}; see {self._log.name}")
            try:
                zk.close(zk.connect(address, timeout=min(2.0, max(0.1, deadline - time.monotonic()))))
                return self
            except zk.FleetUnavailable:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"ZooKeeper did not accept connections within {timeout:g}s") from None

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM, 10.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LocalZooKeeper":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalNginx:
    """nginx with the fleet config (cluster/nginx.conf.template) for the given replicas, in the
    foreground (daemon off), its pid file and temp files under `workdir`."""

    def __init__(self, workdir: str, rest: list[str], grpc: list[str], binary: str = "nginx") -> None:
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.rest_port = free_port()
        self.grpc_port = free_port()
        self.conf = os.path.join(workdir, "nginx.conf")
        self.binary = binary
        self.proc: subprocess.Popen | None = None
        self._stderr = None
        with open(self.conf, "w") as f:
            f.write(nginx_config.render(rest, grpc, f"127.0.0.1:{self.rest_port}", f"127.0.0.1:{self.grpc_port}"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 10.0) -> "LocalNginx":
        for d in ("tmp", "logs"):
            os.makedirs(os.path.join(self.workdir, d), exist_ok=True)
            os.chmod(os.path.join(self.workdir, d), 0o777)  # workers may run as another user when started by root
        pid = os.path.join(self.workdir, "nginx.pid")
        self._stderr = open(os.path.join(self.workdir, "logs", "stderr.log"), "ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", self.conf, "-p", self.workdir, "-e", os.path.join(self.workdir, "logs", "error.log"),
             "-g", f"daemon off; pid {pid};"],
            stdout=subprocess.DEVNULL, stderr=self._stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.errors()}")
            try:
                with socket.create_connection(("127.0.0.1", self.rest_port), timeout=0.2), \
                        socket.create_connection(("127.0.0.1", self.grpc_port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"nginx did not listen within {timeout:g}s: {self.errors()}")

    def errors(self) -> str:
        text = ""
        for name in ("stderr.log", "error.log"):
            try:
                with open(os.path.join(self.workdir, "logs", name)) as f:
                    text += f.read()
            except OSError:
                pass
        return text[-3000:]

    def stop(self) -> None:
        _stop(self.proc, signal.SIGQUIT, 10.0)  # graceful: finish the requests in flight
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> "LocalNginx":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
