"""Fleet test parts: a real ZooKeeper (session fixture), a fleet of real replicas each with its own
copy of the model repository, nginx in front, and client traffic that reads the answering
version from the model's own output (y = x + version)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

pytest.importorskip("kazoo")

from conftest import affine_version, wait_for  # noqa: E402
from hotserve.cluster.local import LocalNginx, LocalZooKeeper  # noqa: E402
from hotserve.launcher import ServerProcess  # noqa: E402


def _have(binary: str) -> bool:
    return any(os.access(os.path.join(d, binary), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin"])


needs_zookeeper = pytest.mark.skipif(not (_have("java") and os.path.exists("/usr/share/java/zookeeper.jar")),
                                     reason="needs Debian's zookeeper package (scripts/install_system_deps.sh)")
needs_nginx = pytest.mark.skipif(not _have("nginx"), reason="needs nginx (scripts/install_system_deps.sh)")


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory):
    """One ZooKeeper for the session; each test fleet lives under its own path."""
    if not (_have("java") and os.path.exists("/usr/share/java/zookeeper.jar")):
        pytest.skip("needs Debian's zookeeper package (scripts/install_system_deps.sh)")
    zk = LocalZooKeeper(str(tmp_path_factory.mktemp("zookeeper")))
    zk.start()
    yield zk
    zk.stop()


def hotserve_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hotserve", *args], capture_output=True, text=True, timeout=timeout)


class Fleet:
    """N replicas of model 'm' in one fleet; replica i serves from its own repository copy."""

    def __init__(self, zk: LocalZooKeeper, workdir: str, n: int = 3, flags: tuple[str, ...] = (),
                 shared_repo: bool = False) -> None:
        self.url = zk.url(f"hotserve/test-{uuid.uuid4().hex[:8]}")
        self.workdir = workdir
        self.flags = flags
        self.shared_repo = shared_repo
        self.build = os.path.join(workdir, "build")
        os.makedirs(self.build, exist_ok=True)
        self.bases = [os.path.join(workdir, "repo" if shared_repo else f"repo{i}", "m") for i in range(n)]
        self.replicas: list[ServerProcess | None] = [None] * n
        self.published = 0
        self.nginx: LocalNginx | None = None

    # -- repository ---------------------------------------------------------------------------
    def publish(self, corrupt_on: tuple[int, ...] = ()) -> int:
        """Publish the next version (y = x + version) to every copy; corrupt it on the given replicas."""
        self.published += 1
        v = self.published
        for i, base in enumerate(sorted(set(self.bases), key=self.bases.index)):
            path = affine_version(base, v, self.build)
            if i in corrupt_on:
                f = os.path.join(path, "model.onnx")
                data = bytearray(open(f, "rb").read())
                data[-1] ^= 0xFF  # same size: the manifest's sizes match, its sha256 does not
                with open(f, "wb") as out:
                    out.write(bytes(data))
        return v

    # -- replicas -----------------------------------------------------------------------------
    def start_replica(self, i: int, wait_ready: bool = True) -> ServerProcess:
        """Start (or restart on the same ports, so nginx's upstreams stay valid) replica i."""
        old = self.replicas[i]
        rest_port = int(old.url.rsplit(":", 1)[1]) if old is not None else 0
        grpc_port = int(old.grpc_target.rsplit(":", 1)[1]) if old is not None else 0
        args = ["--model_name", "m", "--model_base_path", self.bases[i], "--file_system_poll_wait_seconds", "0.2",
                "--fleet", self.url, "--fleet_replica_id", f"replica-{i}", "--admin_token", "t", "--port",
                str(grpc_port), "--num_workers", "1", *self.flags]
        server = ServerProcess(args, os.path.join(self.workdir, f"replica{i}-{time.monotonic_ns()}.log"), port=rest_port)
        self.replicas[i] = server
        server.start(timeout=60)
        if wait_ready:
            server.wait_ready(timeout=60)
        return server

    def start(self) -> "Fleet":
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(self.start_replica, range(len(self.replicas))))
        return self

    def start_nginx(self) -> LocalNginx:
        rest = [r.url.removeprefix("http://") for r in self.replicas]
        grpc = [r.grpc_target for r in self.replicas]
        self.nginx = LocalNginx(os.path.join(self.workdir, "nginx"), rest, grpc).start()
        return self.nginx

    def live(self) -> list[ServerProcess]:
        return [r for r in self.replicas if r is not None and r.proc is not None and r.proc.poll() is None]

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        started = [r for r in self.replicas if r is not None]
        if started:
            with ThreadPoolExecutor(len(started)) as pool:  # each drains for its --drain_seconds: in parallel
                list(pool.map(lambda r: r.stop(), started))

    # -- what serves ----------------------------------------------------------------------------
    def answer(self, server_url: str, x: float = 0.0) -> int:
        """The version that answers a default request, from the model's own output."""
        r = httpx.post(server_url + "/v1/models/m:predict", json={"instances": [[x, 1.0, 2.0, 3.0]]}, timeout=10)
        assert r.status_code == 200, r.text
        return int(round(r.json()["predictions"][0][0] - x))

    def serving(self) -> list[int]:
        return [self.answer(r.url) for r in self.live()]

    def version_state(self, server: ServerProcess, version: int) -> str | None:
        code, body = server.get("/v1/models/m")
        if code != 200:
            return None
        for st in json.loads(body)["model_version_status"]:
            if int(st["version"]) == version:
                return st["state"]
        return None

    def wait_prepared(self, version: int, replicas: list[int] | None = None, timeout: float = 30.0) -> None:
        targets = [self.replicas[i] for i in replicas] if replicas is not None else self.live()
        wait_for(lambda: all(self.version_state(r, version) == "AVAILABLE" for r in targets), timeout,
                 f"version {version} AVAILABLE (prepared) on every replica")

    def wait_failed(self, version: int, i: int, timeout: float = 30.0) -> None:
        wait_for(lambda: self.version_state(self.replicas[i], version) == "END", timeout,
                 f"version {version} to fail on replica {i}")

    def rollout(self, *args: str) -> tuple[int, dict]:
        p = hotserve_cli("rollout", "m", "--fleet", self.url, "--json", *args)
        assert p.stdout.strip(), p.stderr
        return p.returncode, json.loads(p.stdout)

    def status(self) -> str:
        p = hotserve_cli("fleet", "status", "--fleet", self.url)
        assert p.returncode == 0, p.stderr
        return p.stdout


def events(server: ServerProcess, after: int = 0, kind: str = "", wait: float = 0.0) -> tuple[list[dict], int]:
    q = f"/v1/events?after={after}&wait={wait}" + (f"&kind={kind}" if kind else "")
    code, body = server.get(q, timeout=wait + 10)
    assert code == 200, body
    doc = json.loads(body)
    return doc["events"], doc["last"]


def wait_event(server: ServerProcess, match, kind: str, after: int = 0, timeout: float = 20.0) -> dict:
    """Long-poll the replica's event bus until an event of `kind` matches."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, last = events(server, after, kind, wait=min(5.0, max(0.1, deadline - time.monotonic())))
        for ev in got:
            if match(ev):
                return ev
        after = last
    raise AssertionError(f"no {kind} event matched within {timeout}s; log:\n{server.log()[-3000:]}")


@dataclass
class Answer:
    sent: float  # unix time the request was sent
    version: int | None  # read from the model's output
    error: str = ""


class Traffic:
    """Client threads through one address: REST (httpx) and gRPC (tritonclient), each request
    recorded with the time it was sent and the version its output shows (y = x + version)."""

    def __init__(self, url: str, grpc_target: str | None = None, rest_threads: int = 3, grpc_threads: int = 1,
                 max_seconds: float = 60.0) -> None:
        self.url = url
        self.grpc_target = grpc_target
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.max_seconds = max_seconds
        self.threads = [threading.Thread(target=self._rest, args=(i,), daemon=True) for i in range(rest_threads)]
        if grpc_target:
            self.threads += [threading.Thread(target=self._grpc, args=(100 + i,), daemon=True)
                             for i in range(grpc_threads)]

    def _record(self, sent: float, x: float, y: float | None, error: str = "") -> None:
        version = None if y is None else int(round(y - x))
        if y is not None and abs(y - x - version) > 1e-3:
            error = f"output {y} is not x + a version (x={x})"
        with self._lock:
            self.answers.append(Answer(sent, version, error))

    def _rest(self, i: int) -> None:
        x = float(i)
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=30) as c:
            while not self._stop.is_set() and time.monotonic() < deadline:
                sent = time.time()
                try:
                    r = c.post(self.url + "/v1/models/m:predict", json={"instances": [[x, 1.0, 2.0, 3.0]]})
                except httpx.HTTPError as exc:
                    self._record(sent, x, None, f"REST transport error: {exc!r}")
                    continue
                if r.status_code != 200:
                    self._record(sent, x, None, f"REST HTTP {r.status_code}: {r.text[:200]}")
                    continue
                self._record(sent, x, r.json()["predictions"][0][0])

    def _grpc(self, i: int) -> None:
        import tritonclient.grpc as grpcclient

        x = float(i)
        deadline = time.monotonic() + self.max_seconds
        c = grpcclient.InferenceServerClient(self.grpc_target)
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.array([[x, 1.0, 2.0, 3.0]], np.float32))
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                sent = time.time()
                try:
                    res = c.infer("m", [inp], client_timeout=30)
                except Exception as exc:
                    self._record(sent, x, None, f"gRPC error: {exc}")
                    continue
                self._record(sent, x, float(res.as_numpy("y")[0][0]))
        finally:
            c.close()

    def __enter__(self) -> "Traffic":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(40)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_requests(self, n: int, timeout: float = 30.0) -> None:
        start = self.count()
        wait_for(lambda: self.count() - start >= n, timeout, f"{n} more answers")

    def failures(self) -> list[str]:
        with self._lock:
            return [a.error for a in self.answers if a.error]

    def versions_sent_after(self, t: float) -> set[int | None]:
        with self._lock:
            return {a.version for a in self.answers if a.sent > t}
