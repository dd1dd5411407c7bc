"""`hotserve demo`: serve the example MLP, publish a new version every few seconds while
clients keep sending requests, and print what a user of the server would have seen."""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import tempfile
import threading
import time
from urllib.parse import urlparse

import orjson

from hotserve.examples import make_mlp
from hotserve.launcher import ServerProcess
from hotserve.repository.publish import publish

MODEL = "mlp"


class _Client(threading.Thread):
    def __init__(self, url: str, body: bytes, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.body = body
        self.stop_event = stop
        self.latencies: list[float] = []
        self.failures = 0
        self.errors: list[str] = []
        self.regressions = 0
        self.first_seen: dict[int, float] = {}

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        last = -1
        headers = {"Content-Type": "application/json"}
        while not self.stop_event.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("POST", f"/v1/models/{MODEL}:predict", self.body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failures += 1
                self.errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                continue
            t1 = time.perf_counter()
            if resp.status != 200:
                self.failures += 1
                self.errors.append(f"{resp.status} {data[:200]!r}")
                continue
            self.latencies.append(t1 - t0)
            version = int(resp.getheader("x-model-version"))
            if version < last:
                self.regressions += 1
            last = version
            self.first_seen.setdefault(version, time.monotonic())
        conn.close()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_demo(args: argparse.Namespace) -> int:
    own_dir = args.workdir is None
    workdir = tempfile.mkdtemp(prefix="hotserve-demo-") if own_dir else args.workdir
    base = os.path.join(workdir, "models", MODEL)
    build = os.path.join(workdir, "build")
    os.makedirs(build, exist_ok=True)
    published: dict[int, float] = {}

    def publish_new(seed: int) -> None:
        src = make_mlp(os.path.join(build, f"seed{seed}", "model.onnx"), seed=seed)
        version, _ = publish(src, base)
        published[version] = time.monotonic()

    publish_new(1)
    server_args = ["--model_name", MODEL, "--model_base_path", base]
    server = ServerProcess(server_args, os.path.join(workdir, "server.log"), port=args.rest_api_port)
    print(f"hotserve demo: repository {base}; server log {server.log_path}")
    server.start()
    try:
        server.wait_ready()
        print(f"serving on {server.url}; {args.concurrency} clients for {args.duration:g}s, a new version every {args.publish_interval:g}s")
        body = orjson.dumps({"instances": [[0.5] * 784]})
        stop = threading.Event()
        clients = [_Client(server.url, body, stop) for _ in range(args.concurrency)]
        t_start = time.monotonic()
        for c in clients:
            c.start()
        seed = 2
        next_publish = t_start + args.publish_interval
        while time.monotonic() - t_start < args.duration:
            now = time.monotonic()
            # Stop publishing one interval before the end so the last version is seen served.
            if now >= next_publish and now - t_start < args.duration - args.publish_interval:
                publish_new(seed)
                seed += 1
                next_publish += args.publish_interval
            time.sleep(0.01)
        stop.set()
        for c in clients:
            c.join(15)
        elapsed = time.monotonic() - t_start
    finally:
        server.stop()

    latencies = [x for c in clients for x in c.latencies]
    failures = sum(c.failures for c in clients)
    regressions = sum(c.regressions for c in clients)
    first_seen: dict[int, float] = {}
    for c in clients:
        for v, t in c.first_seen.items():
            first_seen[v] = min(t, first_seen.get(v, t))
    print()
    print(f"{'requests':<28}{len(latencies) + failures}")
    print(f"{'failed requests':<28}{failures}")
    print(f"{'throughput':<28}{len(latencies) / elapsed:.0f} req/s")
    print(f"{'latency p50 / p99':<28}{_pct(latencies, 0.5) * 1e3:.2f} ms / {_pct(latencies, 0.99) * 1e3:.2f} ms")
    print(f"{'versions published':<28}{len(published)}")
    print(f"{'versions seen by clients':<28}{len(first_seen)}  {sorted(first_seen)}")
    print(f"{'version went backwards':<28}{regressions} times (for any one client)")
    print()
    print(f"{'version':>8}  {'published at':>12}  {'publish->served':>16}")
    for v in sorted(published):
        at = published[v] - t_start
        if v in first_seen:
            lat = max(0.0, first_seen[v] - published[v]) * 1e3
            served = f"{lat:.0f} ms" if v != 1 else "(initial)"
        else:
            served = "never seen"
        print(f"{v:>8}  {at:>11.2f}s  {served:>16}")
    if failures:
        print("\nfirst errors:", *{e for c in clients for e in c.errors[:3]}, sep="\n  ")
    loaded = [v for v in published if v != 1 and v in first_seen]
    if loaded:
        lats = [(first_seen[v] - published[v]) * 1e3 for v in loaded]
        print(f"\npublish->served median {statistics.median(lats):.0f} ms, max {max(lats):.0f} ms")
    if own_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if failures == 0 and regressions == 0 else 1
