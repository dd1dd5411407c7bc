"""Safe rollout: labels on every front end, canary with automatic rollback and promotion,
sticky routing keys, instant rollback, the token-protected management API, routing state
that survives a restart, and the metrics that show it all."""

import os
import re
import subprocess
import sys
import threading
import time

import grpc
import httpx
import numpy as np
import pytest

from conftest import affine_version, python_version, status, wait_for, wait_state

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
X = {"instances": [[1.0, 1.0, 1.0, 1.0]]}


def admin(server, action: str, body: dict | None = None, model: str = "m", headers=AUTH) -> httpx.Response:
    if action == "":
        return httpx.get(f"{server.url}/v1/admin/models/{model}", headers=headers, timeout=60)
    return httpx.post(f"{server.url}/v1/admin/models/{model}/{action}", json=body or {}, headers=headers, timeout=60)


def predict_version(c: httpx.Client, server, path: str = "/v1/models/m:predict", headers=None) -> int:
    r = c.post(server.url + path, json=X, headers=headers)
    assert r.status_code == 200, r.text
    return int(r.headers["x-model-version"])


def test_management_api_auth(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    off = start_server(base)
    r = admin(off, "pin", {"version": 1})
    assert r.status_code == 403 and "--admin_token" in r.json()["error"]
    on = start_server(base, "--admin_token", TOKEN)
    assert admin(on, "pin", {"version": 1}, headers={}).status_code == 401
    assert admin(on, "pin", {"version": 1}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert admin(on, "pin", {"version": 1}).status_code == 200
    r = admin(on, "pin", {"version": 7})
    assert r.status_code == 404 and "no complete version 7" in r.json()["error"]
    r = admin(on, "labels", {"labels": {"stable": "x"}})
    assert r.status_code == 400 and "version number" in r.json()["error"]


def test_labels_on_every_front_end_and_label_moves_only_once_loaded(repo, start_server, tmp_path):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    import tensorflow as tf

    base, build = repo
    affine_version(base, 1, build)
    python_version(base, 2, build, load_sleep=2.5)  # slow to load
    server = start_server(None, "--admin_token", TOKEN, "--model_config_file", _yaml(tmp_path, base, "specific: {versions: [1]}"))
    wait_state(server, 1, "AVAILABLE")
    assert admin(server, "labels", {"labels": {"stable": 1}}).status_code == 200
    moved = {}

    def move():
        moved["resp"] = admin(server, "labels", {"labels": {"stable": 2}})

    t = threading.Thread(target=move)
    t.start()
    with httpx.Client() as c:
        wait_state(server, 2, "LOADING")
        # While version 2 loads, the label still routes to 1.
        assert predict_version(c, server, "/v1/models/m/labels/stable:predict") == 1
        t.join(30)
        assert moved["resp"].status_code == 200, moved["resp"].text
        assert moved["resp"].json()["labels"] == {"stable": 2}
        assert predict_version(c, server, "/v1/models/m/labels/stable:predict") == 2
        assert predict_version(c, server) == 2  # 'stable' is the default route
        r = c.get(server.url + "/v1/models/m/labels/stable")
        assert r.json()["model_version_status"][0]["version"] == "2"
        assert c.get(server.url + "/v1/models/m/labels/stable/metadata").headers["x-model-version"] == "2"
        r = c.post(server.url + "/v1/models/m/labels/nope:predict", json=X)
        assert r.status_code == 404 and "label 'nope'" in r.json()["error"]
        # KServe V2: the version field takes a label.
        r = c.post(server.url + "/v2/models/m/versions/stable/infer",
                   json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]})
        assert r.status_code == 200 and r.json()["model_version"] == "2"
    # TF Serving gRPC: model_spec.version_label.
    channel = grpc.insecure_channel(server.grpc_target)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "m"
    req.model_spec.version_label = "stable"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4), np.float32)))
    resp = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=10)
    assert resp.model_spec.version.value == 2
    channel.close()


def _yaml(tmp_path, base, policy: str, canary: str = "") -> str:
    path = tmp_path / "models.yaml"
    extra = f", canary: {{{canary}}}" if canary else ""
    path.write_text(f"model_config_list:\n  - {{name: m, base_path: {base}, model_version_policy: {{{policy}}}{extra}}}\n")
    return str(path)


def test_canary_rolls_back_a_failing_version_and_promotes_the_next(repo, start_server, tmp_path):
    """Issue 4's acceptance: two models from one config file, a new version canaried at 10%,
    rolled back automatically when it returns errors, the next one promoted; no failed request
    outside the canary's own, on either model; all of it in the metrics."""
    base, build = repo
    other = str(tmp_path / "other")
    python_version(base, 1, build)
    affine_version(other, 1, build)
    cfg = tmp_path / "models.yaml"
    cfg.write_text(
        "model_config_list:\n"
        f"  - {{name: m, base_path: {base}, canary: {{weight: 10, auto: true, window_seconds: 2, min_requests: 20,"
        " max_latency_ratio: 1000}}\n"
        f"  - {{name: other, base_path: {other}}}\n")
    server = start_server(None, "--model_config_file", str(cfg), "--admin_token", TOKEN)
    failures: list[tuple[str, int, str, float]] = []
    seen: list[int] = []
    stop = threading.Event()

    def client(model: str):
        with httpx.Client(timeout=30) as c:
            for _ in range(100_000):
                if stop.is_set():
                    return
                sent = time.monotonic()
                r = c.post(f"{server.url}/v1/models/{model}:predict", json=X)
                v = int(r.headers.get("x-model-version", -1))
                if r.status_code != 200:
                    failures.append((model, v, r.text, sent))
                elif model == "m":
                    seen.append(v)
                time.sleep(0.001)

    threads = [threading.Thread(target=client, args=(mdl,)) for mdl in ("m", "m", "m", "other")]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(seen) > 30, 20, "traffic on version 1")
        python_version(base, 2, build, fail_nonzero=True)  # passes validation, fails real inputs
        wait_for(lambda: "canary version 2 rolled back" in server.log(), 60, "the canary to be rolled back")
        # The decision is logged, then the route swaps; a request bound to the canary just
        # before the swap may still fail (the canary's own). A request sent after the split is
        # seen gone binds to the new table and must not fail.
        wait_for(lambda: admin(server, "").json()["canary"] is None, 10, "the split to be removed")
        split_gone = time.monotonic()
        time.sleep(0.5)
        late = [f for f in failures if f[3] > split_gone]
        assert late == [], late[:3]
        assert admin(server, "").json()["rolled_back"] == [2]
        python_version(base, 3, build)
        wait_for(lambda: "canary version 3 promoted to stable" in server.log(), 60, "the next canary to be promoted")
        wait_for(lambda: seen[-20:] == [3] * 20, 20, "all traffic on version 3")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    # The only failed requests are the canary's own, about a tenth of m's traffic while it ran.
    assert failures and all(mdl == "m" and v == 2 for mdl, v, _, _ in failures), failures[:3]
    assert "fails real inputs on purpose" in failures[0][2]
    assert 1 in seen and 3 in seen
    routing = admin(server, "").json()
    assert routing["labels"] == {"stable": 3} and routing["default_version"] == 3
    _, body = server.get("/monitoring/prometheus/metrics")
    text = body.decode()
    assert 'hotserve_canary_decisions_total{model="m",decision="rollback"} 1' in text
    assert 'hotserve_canary_decisions_total{model="m",decision="promote"} 1' in text
    assert 'hotserve_rollbacks_total{model="m",reason="canary"} 1' in text
    assert re.search(r':tensorflow:serving:request_count\{model_name="m",model_version="2",API="predict",'
                     r'entrypoint="REST",status="INTERNAL"\} [1-9]', text)
    assert re.search(r':tensorflow:serving:request_count\{model_name="other",model_version="1",API="predict",'
                     r'entrypoint="REST",status="OK"\} [1-9]', text)


def test_canary_latency_regression_is_rolled_back(repo, start_server, tmp_path):
    base, build = repo
    python_version(base, 1, build)
    cfg = _yaml(tmp_path, base, "latest: {num_versions: 1}",
                "weight: 50, auto: true, window_seconds: 30, min_requests: 15, max_latency_ratio: 5")
    server = start_server(None, "--model_config_file", cfg)
    python_version(base, 2, build, sleep=0.05)  # 50 ms per request vs well under 1 ms
    wait_state(server, 2, "AVAILABLE")
    with httpx.Client(timeout=30) as c:
        for _ in range(400):
            c.post(server.url + "/v1/models/m:predict", json=X)
            if "canary version 2 rolled back" in server.log():
                break
    assert "canary version 2 rolled back" in server.log() and "p99" in server.log()


def test_sticky_request_keys_and_split_share(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    affine_version(base, 2, build)
    server = start_server(base, "--admin_token", TOKEN, "--num_versions", "2")
    wait_state(server, 2, "AVAILABLE")
    r = admin(server, "canary", {"version": 2, "weight": 25})
    assert r.status_code == 200 and r.json()["canary"] == {"version": 2, "weight": 25.0}
    assert r.json()["labels"] == {"canary": 2, "stable": 1}
    with httpx.Client() as c:
        for key in ("alice", "bob", "carol"):
            got = {predict_version(c, server, headers={"X-Request-Key": key}) for _ in range(15)}
            assert len(got) == 1, (key, got)  # one key, one side
        split = [predict_version(c, server, headers={"X-Request-Key": f"user-{i}"}) for i in range(400)]
    share = split.count(2) / len(split)
    assert 0.15 < share < 0.35, share  # crc32 of 400 distinct keys: ~25%, deterministic for these keys
    r = admin(server, "canary", {"version": None})
    assert r.json()["canary"] is None and r.json()["default_version"] == 1


def test_rollback_to_a_loaded_version_is_instant_and_survives_restart(repo, start_server, tmp_path):
    base, build = repo
    for v in (1, 2):
        affine_version(base, v, build)
    server = start_server(base, "--admin_token", TOKEN, "--num_versions", "2")
    wait_state(server, 1, "AVAILABLE")
    with httpx.Client() as c:
        assert predict_version(c, server) == 2
        r = admin(server, "rollback", {})
        assert r.status_code == 200 and r.json()["default_version"] == 1
        assert predict_version(c, server) == 1  # the very next request, no waiting
    assert "version 2: loading" in server.log() and server.log().count("version 1: loading") == 1  # no reload
    # A newer version does not go live while pinned by the rollback.
    affine_version(base, 3, build)
    time.sleep(1.0)
    assert predict_version(httpx.Client(), server) == 1
    server.stop()
    again = start_server(base, "--admin_token", TOKEN, "--num_versions", "2")
    routing = admin(again, "").json()
    assert routing["pinned"] == 1 and routing["default_version"] == 1 and 2 in routing["rolled_back"]
    # The CLI clears the pin; the policy's newest version serves again.
    out = subprocess.run([sys.executable, "-m", "hotserve", "pin", "m", "--clear", "--url", again.url, "--token", TOKEN],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "default version 3" in out.stdout
    out = subprocess.run([sys.executable, "-m", "hotserve", "rollback", "m", "--to", "1", "--url", again.url],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "HOTSERVE_ADMIN_TOKEN": TOKEN})
    assert out.returncode == 0 and "default version 1" in out.stdout and "pinned to version 1" in out.stdout
    out = subprocess.run([sys.executable, "-m", "hotserve", "rollback", "m", "--url", again.url, "--token", "bad"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "HTTP 401" in out.stderr


def test_metrics_endpoint(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    with httpx.Client() as c:
        for _ in range(3):
            c.post(server.url + "/v1/models/m:predict", json=X)
        c.post(server.url + "/v1/models/m:predict", json={"instances": [[1]]})
        for path in ("/monitoring/prometheus/metrics", "/metrics"):
            r = c.get(server.url + path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert ':tensorflow:serving:request_count{model_name="m",model_version="1",API="predict",entrypoint="REST",status="OK"} 3' in text
    assert 'status="INVALID_ARGUMENT"} 1' in text
    assert ':tensorflow:serving:request_latency_count{model_name="m",model_version="1",API="predict",entrypoint="REST"} 4' in text
    assert 'hotserve_model_loads_total{model="m",outcome="ok"} 1' in text
    assert 'hotserve_version_state{model="m",version="1",state="AVAILABLE"} 1' in text
    assert re.search(r'hotserve_version_memory_bytes\{model="m",version="1",kind="estimate"\} \d+', text)
