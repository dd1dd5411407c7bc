"""Graceful shutdown: on SIGTERM readiness fails at once, requests are still served for
--drain_seconds, then the server stops accepting, finishes what is in flight (REST and gRPC)
and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import threading

import httpx
import numpy as np
import pytest

from conftest import python_version, wait_for

pytestmark = pytest.mark.e2e


def _in_flight(server) -> float:
    code, body = server.get("/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith('hotserve_requests_in_flight{model="m",'))  # every version of m


def _refuses(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        return False
    except OSError:
        return True


def test_sigterm_drains_then_finishes_in_flight_rest_and_grpc(repo, start_server, tmp_path):
    import grpc
    import tritonclient.grpc as grpcclient
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    base, build = repo
    gate, entered = str(tmp_path / "gate"), str(tmp_path / "entered")
    python_version(base, 1, build, gate=gate, entered=entered)
    server = start_server(base, "--drain_seconds", "1")
    results: list[str] = []

    def rest_call() -> None:
        r = httpx.post(server.url + "/v1/models/m:predict", json={"instances": [[999.0, 1, 2, 3]]}, timeout=60)
        results.append(f"rest {r.status_code} {r.json()}")

    def grpc_call() -> None:
        c = grpcclient.InferenceServerClient(server.grpc_target)
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.array([[999.0, 1, 2, 3]], np.float32))
        try:
            res = c.infer("m", [inp], client_timeout=60)
            results.append(f"grpc ok {res.as_numpy('y').tolist()}")
        except Exception as exc:
            results.append(f"grpc error {exc}")
        finally:
            c.close()

    threads = [threading.Thread(target=rest_call) for _ in range(3)] + [threading.Thread(target=grpc_call) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: _in_flight(server) == 5, 20, "5 requests in flight")
    channel = grpc.insecure_channel(server.grpc_target)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING

    server.proc.send_signal(signal.SIGTERM)
    # Readiness fails at once, while requests are still answered (the balancer's grace).
    wait_for(lambda: server.get("/readyz")[0] == 503, 5, "readiness to fail")
    assert b'"draining":true' in server.get("/readyz")[1]
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.NOT_SERVING
    r = httpx.post(server.url + "/v1/models/m:predict", json={"instances": [[1.0, 1, 2, 3]]}, timeout=10)
    assert r.status_code == 200 and r.headers["connection"] == "close", r.headers
    channel.close()
    # After the drain it stops accepting; what is in flight still finishes, then it exits 0.
    wait_for(lambda: _refuses(server.url), 10, "the REST port to stop accepting")
    assert server.proc.poll() is None, "exited with requests in flight"
    open(gate, "w").close()
    for t in threads:
        t.join(30)
    assert server.proc.wait(30) == 0, server.log()[-3000:]
    assert sorted(r.split(" ")[0] + " " + r.split(" ")[1] for r in results) == ["grpc ok"] * 2 + ["rest 200"] * 3, results
    assert all("1000.0" in r for r in results), results  # 999 + version 1: answered by the model
    assert os.path.exists(entered)
