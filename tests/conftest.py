"""Fixtures: model builders and real hotserve server processes on 127.0.0.1."""

from __future__ import annotations

import os
import textwrap
import threading
import time

import httpx
import numpy as np
import pytest

from hotserve.examples import make_affine
from hotserve.launcher import ServerProcess
from hotserve.repository.publish import publish


def affine_version(base: str, version: int, build_dir: str, offset: float | None = None) -> str:
    """Publish y = x + offset (offset defaults to the version number) as `version`."""
    src = make_affine(os.path.join(build_dir, f"affine-{version}-{offset}", "model.onnx"),
                      float(version if offset is None else offset))
    return publish(src, base, version)[1]


def python_model_source(offset: float, gate: str | None = None, entered: str | None = None,
                        load_sleep: float = 0.0, fail_predict: bool = False, fail_nonzero: bool = False,
                        sleep: float = 0.0) -> str:
    """A Python-runtime model: y = x + offset. A request whose first value is 999 signals
    `entered` and then blocks until the `gate` file exists (bounded at 60 s)."""
    return textwrap.dedent(f"""
        import os, time
        import numpy as np

        SIGNATURE = {{"inputs": {{"x": ("float32", [-1, 4])}}, "outputs": {{"y": ("float32", [-1, 4])}}}}

        def load(path):
            time.sleep({load_sleep!r})

        def predict(inputs):
            x = inputs["x"]
            if {fail_predict!r}:
                raise RuntimeError("this version is broken on purpose")
            if {fail_nonzero!r} and float(abs(x).sum()) != 0.0:
                # Passes validation (zeros) but fails real traffic: what a canary must catch.
                raise RuntimeError("this version fails real inputs on purpose")
            if {sleep!r}:
                time.sleep({sleep!r})
            if x.size and x.flat[0] == 999.0 and {gate!r} is not None:
                open({entered!r}, "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists({gate!r}) and time.monotonic() < deadline:
                    time.sleep(0.01)
            return {{"y": x + np.float32({offset!r})}}
    """)


def python_version(base: str, version: int, build_dir: str, extra_bytes: int = 0, **kw) -> str:
    """extra_bytes pads the version with a weights file, to give it a size (memory budget tests)."""
    d = os.path.join(build_dir, f"py-{version}-{time.monotonic_ns()}")
    os.makedirs(d)
    if extra_bytes:
        with open(os.path.join(d, "weights.bin"), "wb") as f:
            f.write(os.urandom(extra_bytes))
    with open(os.path.join(d, "model.py"), "w") as f:
        f.write(python_model_source(kw.pop("offset", float(version)), **kw))
    return publish(d, base, version)[1]


@pytest.fixture
def repo(tmp_path):
    """(base_path, build_dir) for one model."""
    base = tmp_path / "models" / "m"
    build = tmp_path / "build"
    build.mkdir()
    return str(base), str(build)


def one_worker_unless_asked(flags) -> list[str]:
    """The flags, plus --num_workers 1 unless they name a worker count: tests reason about one
    process's events and state; the default shape (a worker per core) is tested on its own."""
    flags = list(flags)
    return flags if any(f.startswith(("--num_workers", "--num-workers")) for f in flags) else ["--num_workers", "1", *flags]


@pytest.fixture
def start_server(tmp_path):
    """start_server(base, *flags) -> a started ServerProcess serving model 'm'; all are stopped at teardown."""
    servers: list[ServerProcess] = []

    def start(base: str | None, *flags: str, wait_ready: bool = True, prefix: list[str] | None = None,
              env: dict | None = None) -> ServerProcess:
        """base=None: the flags name the models (--model_config_file)."""
        model = ["--model_name", "m", "--model_base_path", base] if base is not None else []
        args = [*model, "--file_system_poll_wait_seconds", "0.2", "--version_settle_seconds", "0.5",
                *one_worker_unless_asked(flags)]
        server = ServerProcess(args, str(tmp_path / f"server{len(servers)}.log"), env=env, prefix=prefix)
        servers.append(server)
        server.start()
        if wait_ready:
            server.wait_ready()
        return server

    yield start
    for s in servers:
        s.stop()


def predict(client: httpx.Client, url: str, x: list, version: int | None = None) -> httpx.Response:
    path = "/v1/models/m" + (f"/versions/{version}" if version is not None else "") + ":predict"
    return client.post(url + path, json={"instances": x})


def status(server: ServerProcess, model: str = "m") -> dict[int, dict]:
    code, body = server.get(f"/v1/models/{model}")
    assert code == 200, body
    import json

    return {int(s["version"]): s for s in json.loads(body)["model_version_status"]}


def wait_for(cond, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _state(server: ServerProcess, model: str, version: int) -> str | None:
    code, body = server.get(f"/v1/models/{model}")
    if code == 404:
        return None  # the model is not configured (yet)
    return status(server, model).get(version, {}).get("state")


def wait_event(server: ServerProcess, kind: str, timeout: float = 20.0, after: int = 0, **match) -> dict:
    """Block on the server's event bus (GET /v1/events, long polling) until an event of `kind`
    whose fields equal `match` arrives after sequence number `after`; returns it."""
    import json

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind} event {match} within {timeout}s; log:\n{server.log()[-3000:]}")
        code, body = server.get(f"/v1/events?after={after}&kind={kind}&wait={min(left, 5):.2f}", timeout=left + 5)
        assert code == 200, body
        doc = json.loads(body)
        for ev in doc["events"]:
            if all(ev.get(k) == v for k, v in match.items()):
                return ev
        after = doc["last"]


def wait_state(server: ServerProcess, version: int, state: str, timeout: float = 20.0, model: str = "m") -> None:
    wait_for(lambda: _state(server, model, version) == state, timeout,
             f"version {version} to reach {state}; log:\n{server.log()[-3000:]}")


class LoadClients:
    """Client threads that predict in a loop (bounded by count and time) and check each reply:
    200, the output equals x + the version in X-Model-Version, and, unless allow_backwards,
    the version never goes down for any one client."""

    def __init__(self, url: str, n: int = 4, allow_backwards: bool = False, max_seconds: float = 60.0,
                 max_requests: int = 200_000) -> None:
        self.url = url
        self.allow_backwards = allow_backwards
        self.stop_event = threading.Event()
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.errors: list[str] = []
        self.count = 0
        self.versions: set[int] = set()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        x = [[float(i), 1.0, 2.0, 3.0]]
        last = -1
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=30) as client:
            for _ in range(self.max_requests):
                if self.stop_event.is_set() or time.monotonic() > deadline:
                    return
                try:
                    r = predict(client, self.url, x)
                except httpx.HTTPError as exc:
                    self._fail(f"transport error: {exc!r}")
                    continue
                if r.status_code != 200:
                    self._fail(f"HTTP {r.status_code}: {r.text[:200]}")
                    continue
                v = int(r.headers["x-model-version"])
                y = r.json()["predictions"][0]
                if not np.allclose(y, np.array(x[0]) + v):
                    self._fail(f"version {v} answered {y}, expected x + {v}")
                if v < last and not self.allow_backwards:
                    self._fail(f"client {i}: version went backwards {last} -> {v}")
                last = v
                with self._lock:
                    self.count += 1
                    self.versions.add(v)

    def _fail(self, msg: str) -> None:
        with self._lock:
            self.errors.append(msg)

    def __enter__(self) -> "LoadClients":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)

    def wait_requests(self, n: int, timeout: float = 20.0) -> None:
        start = self.count
        wait_for(lambda: self.count - start >= n, timeout, f"{n} more successful requests")


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A moto S3 server process for the module (tests/moto_server.py), stopped after it."""
    pytest.importorskip("moto")
    from moto_server import MotoServer

    server = MotoServer(str(tmp_path_factory.mktemp("moto") / "moto.log")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """redis:// URL of a redis-server process for the module (tests/redis_server.py), stopped after it."""
    pytest.importorskip("redis")
    from redis_server import RedisServer

    server = RedisServer(str(tmp_path_factory.mktemp("redis"))).start()
    yield server.url
    server.stop()


@pytest.fixture
def grpc_served(repo, start_server):
    """(server, channel, base, build): model 'm' version 1 (y = x + 1) served, a gRPC channel to it."""
    import grpc

    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    channel = grpc.insecure_channel(server.grpc_target)
    yield server, channel, base, build
    channel.close()
