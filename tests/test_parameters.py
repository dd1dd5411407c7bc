"""Live parameter updates (issue 12) with real server processes: a delta changes exactly the
predictions it should (checked against numpy outside the server), a request in flight across a
delta answers with the old revision, a bad delta changes nothing, a delta acknowledged with 200
survives kill -9, two workers converge, rollback to a revision is instant, concurrent writers
with expect_revision get 409, compaction publishes the folded version."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
from safetensors.numpy import save as st_save

from conftest import one_worker_unless_asked, wait_event, wait_for
from hotserve.examples import make_embedding_model
from hotserve.launcher import ServerProcess
from hotserve.protos.inference import grpc_service_pb2 as v2pb
from hotserve.repository.publish import publish

TOKEN = "param-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROWS, DIM, DENSE = 1000, 8, 4


def _model_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The values make_embedding_model(seed) writes, read back the way any client would."""
    import onnx
    from onnx import numpy_helper

    path = f"/tmp/hotserve-param-ref-{os.getpid()}-{seed}.onnx"
    make_embedding_model(path, ROWS, DIM, DENSE, seed)
    inits = {i.name: numpy_helper.to_array(i).copy() for i in onnx.load(path).graph.initializer}
    os.unlink(path)
    return inits["item_embedding"], inits["head.weight"], inits["head.bias"]


def _reference(table, w, b, items, dense) -> np.ndarray:
    """The model computed with numpy, outside the server."""
    return (np.concatenate([table[items], dense], axis=1) @ w + b).astype(np.float32)


def _publish_model(base: str, build: str, version: int = 1) -> None:
    src = make_embedding_model(os.path.join(build, f"emb-{version}", "model.onnx"), ROWS, DIM, DENSE, 0)
    publish(src, base, version)


def _start(tmp_path, base: str, *flags: str, name: str = "server") -> ServerProcess:
    args = ["--model_name", "m", "--model_base_path", base, "--file_system_poll_wait_seconds", "0.2",
            "--admin_token", TOKEN, *one_worker_unless_asked(flags)]
    server = ServerProcess(args, str(tmp_path / f"{name}.log"))
    server.start()
    server.wait_ready()
    return server


def update(server, doc=None, version: int = 1, data: bytes | None = None, query: str = "", auth=AUTH) -> httpx.Response:
    url = f"{server.url}/v1/models/m/versions/{version}:update_parameters" + (f"?{query}" if query else "")
    if data is not None:
        return httpx.post(url, content=data, headers={**auth, "Content-Type": "application/x-safetensors"}, timeout=30)
    return httpx.post(url, json=doc, headers=auth, timeout=30)


def predict(server, items, dense) -> httpx.Response:
    return httpx.post(server.url + "/v1/models/m:predict",
                      json={"inputs": {"item": [int(i) for i in items], "dense": np.asarray(dense).tolist()}}, timeout=30)


def scores(server, items, dense) -> tuple[np.ndarray, int]:
    r = predict(server, items, dense)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"], np.float32), int(r.headers["x-model-revision"])


def served_revision(server) -> int:
    code, body = server.get("/v1/models/m")
    assert code == 200, body
    # Absent until the version takes deltas: the status stays exactly TF Serving's for revision 0.
    return json.loads(body)["model_version_status"][0].get("revision", 0)


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    """One server on the embedding model for the tests that share it (each reads the revision it starts from)."""
    tmp = tmp_path_factory.mktemp("emb")
    base, build = str(tmp / "models" / "m"), str(tmp / "build")
    _publish_model(base, build)
    server = _start(tmp, base, "--rest_api_max_body_bytes", str(8 << 20))
    yield server, base
    server.stop()


def test_a_delta_changes_exactly_the_rows_it_writes(emb):
    server, _ = emb
    table, w, b = _model_arrays()
    rng = np.random.default_rng(1)
    items = np.arange(ROWS)
    dense = rng.standard_normal((ROWS, DENSE)).astype(np.float32)
    before, rev0 = scores(server, items, dense)
    np.testing.assert_allclose(before, _reference(table, w, b, items, dense), rtol=1e-5, atol=1e-5)

    touched = np.array([3, 17, 500, 999])
    new_rows = rng.standard_normal((len(touched), DIM)).astype(np.float32)
    r = update(server, {"updates": [{"name": "item_embedding", "rows": touched.tolist(), "values": new_rows.tolist()}],
                        "expect_revision": rev0})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == "m" and doc["version"] == 1 and doc["revision"] == rev0 + 1 and doc["applied_ms"] > 0
    assert r.headers["x-model-revision"] == str(rev0 + 1)
    table[touched] = new_rows

    after, rev = scores(server, items, dense)
    assert rev == rev0 + 1
    np.testing.assert_allclose(after, _reference(table, w, b, items, dense), rtol=1e-5, atol=1e-5)
    changed = np.nonzero(np.abs(after - before).max(axis=1) > 0)[0]
    assert changed.tolist() == touched.tolist()  # exactly the rows written, no other prediction moved

    # A whole dense tensor, as safetensors: every prediction moves by the bias change.
    bias = np.array([0.75], np.float32)
    r = update(server, data=st_save({"head.bias": bias}), query=f"expect_revision={rev0 + 1}")
    assert r.status_code == 200 and r.json()["revision"] == rev0 + 2, r.text
    b = bias
    final, rev = scores(server, items, dense)
    assert rev == rev0 + 2
    np.testing.assert_allclose(final, _reference(table, w, b, items, dense), rtol=1e-5, atol=1e-5)

    # Every API names the revision: V2 REST body, gRPC V2 body and metadata.
    v2 = httpx.post(server.url + "/v2/models/m/infer", json={"inputs": [
        {"name": "item", "datatype": "INT64", "shape": [1], "data": [3]},
        {"name": "dense", "datatype": "FP32", "shape": [1, DENSE], "data": [0, 0, 0, 0]}]}).json()
    assert v2["parameters"]["revision"] == rev0 + 2 and v2["model_version"] == "1"
    with grpc.insecure_channel(server.grpc_target) as ch:
        req = v2pb.ModelInferRequest(model_name="m")
        t = req.inputs.add(name="item", datatype="INT64", shape=[1])
        t.contents.int64_contents.append(3)
        t = req.inputs.add(name="dense", datatype="FP32", shape=[1, DENSE])
        t.contents.fp32_contents.extend([0, 0, 0, 0])
        infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=v2pb.ModelInferRequest.SerializeToString,
                               response_deserializer=v2pb.ModelInferResponse.FromString)
        resp, call = infer.with_call(req, timeout=10)
        assert resp.parameters["revision"].int64_param == rev0 + 2
        assert dict(call.trailing_metadata())["x-model-revision"] == str(rev0 + 2)
    # Status and metadata list the history: tensors, rows, source.
    st = json.loads(server.get("/v1/models/m")[1])["model_version_status"][0]
    hist = st["revision_history"]
    assert st["revision"] == rev0 + 2 and hist[0]["tensors"] == ["head.bias"]
    assert hist[1]["tensors"] == ["item_embedding"] and hist[1]["rows"] == 4 and hist[1]["source"] == "api"
    meta = json.loads(server.get("/v1/models/m/metadata")[1])
    assert meta["parameters"]["revision"] == rev0 + 2
    assert {t["name"]: t["kind"] for t in meta["parameters"]["tensors"]}["item_embedding"] == "table"


def test_a_bad_delta_changes_nothing(emb):
    server, base = emb
    items, dense = np.arange(0, ROWS, 7), np.ones((len(range(0, ROWS, 7)), DENSE), np.float32)
    before, rev = scores(server, items, dense)
    log_before = sorted(os.listdir(os.path.join(base, "1", "deltas"))) if os.path.isdir(os.path.join(base, "1", "deltas")) else []
    good = {"name": "item_embedding", "rows": [1], "values": [[9.0] * DIM]}
    cases = [
        (404, "unknown tensor 'nope'", {"updates": [good, {"name": "nope", "values": [1.0]}]}),
        (400, "expected [12, 1]", {"updates": [good, {"name": "head.weight", "values": [1.0, 2.0]}]}),
        (400, "out of range", {"updates": [{"name": "item_embedding", "rows": [ROWS], "values": [[0.0] * DIM]}]}),
        (400, "appears more than once", {"updates": [{"name": "item_embedding", "rows": [2, 2], "values": [[0.0] * DIM] * 2}]}),
        (400, "values for 1 row(s) have shape [1, 3]", {"updates": [{"name": "item_embedding", "rows": [2], "values": [[0.0] * 3]}]}),
        (400, "numbers", {"updates": [good, {"name": "head.bias", "values": ["x"]}]}),
        (400, "expected a JSON object", {"changes": []}),
    ]
    for status, message, doc in cases:
        r = update(server, doc)
        assert r.status_code == status and message in r.json()["error"], (doc, r.status_code, r.text)
    assert update(server, data=b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}").status_code == 400
    r = update(server, {"updates": [good]}, query=f"expect_revision={rev + 5}")
    assert r.status_code == 409 and f"serves revision {rev}" in r.json()["error"]
    assert update(server, {"updates": [good]}, auth={"Authorization": "Bearer wrong"}).status_code == 401
    assert update(server, {"updates": [good]}, version=9).status_code == 404
    # Too large: over --rest_api_max_body_bytes (8 MiB here) the HTTP layer answers 413 before reading.
    host, port = server.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/models/m/versions/1:update_parameters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/x-safetensors\r\nContent-Length: {64 << 20}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    after, rev_after = scores(server, items, dense)
    assert rev_after == rev and np.array_equal(after, before)
    deltas = os.path.join(base, "1", "deltas")
    assert (sorted(os.listdir(deltas)) if os.path.isdir(deltas) else []) == log_before  # nothing was written
    ev = wait_event(server, "delta_rejected", code="NOT_FOUND")
    assert "unknown tensor 'nope'" in ev["reason"]


def test_rollback_to_a_revision_is_instant_and_forward_again(emb, tmp_path):
    server, _ = emb
    items, dense = np.arange(ROWS), np.zeros((ROWS, DENSE), np.float32)
    start_scores, start = scores(server, items, dense)
    revs, outs = [start], [start_scores]
    for i in range(3):
        r = update(server, {"updates": [{"name": "item_embedding", "rows": list(range(i * 10, i * 10 + 10)),
                                         "values": np.full((10, DIM), float(i + 1)).tolist()}]})
        assert r.status_code == 200, r.text
        s, rev = scores(server, items, dense)
        revs.append(rev)
        outs.append(s)
    # One more through the command line, as safetensors, naming the revision it builds on.
    path = tmp_path / "delta.safetensors"
    path.write_bytes(st_save({"item_embedding.rows": np.array([40], np.int64),
                              "item_embedding.values": np.full((1, DIM), 4.0, np.float32)}))
    out = subprocess.run([sys.executable, "-m", "hotserve", "update", "m", "--version", "1", str(path), "--url", server.url,
                          "--token", TOKEN, "--expect_revision", str(revs[-1])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"serving revision {revs[-1] + 1}" in out.stdout, out.stdout + out.stderr
    s, rev = scores(server, items, dense)
    revs.append(rev)
    outs.append(s)
    stale = subprocess.run([sys.executable, "-m", "hotserve", "update", "m", "--version", "1", str(path), "--url", server.url,
                            "--token", TOKEN, "--expect_revision", str(revs[1])], capture_output=True, text=True, timeout=60)
    assert stale.returncode != 0 and "HTTP 409" in stale.stderr
    cli = [sys.executable, "-m", "hotserve", "rollback", "m", "--url", server.url, "--token", TOKEN]
    out = subprocess.run([*cli, "--revision", f"1.{revs[1]}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"serving revision {revs[1]}" in out.stdout, out.stdout + out.stderr
    ms = float(re.search(r"\(([\d.]+) ms\)", out.stdout).group(1))
    assert ms < 2000  # in memory: no reload (the figure itself is a bench matter)
    s, rev = scores(server, items, dense)
    assert rev == revs[1] and np.array_equal(s, outs[1])
    # Forward again to the newest: replayed from the delta log on disk.
    r = httpx.post(server.url + "/v1/admin/models/m/rollback", json={"revision": f"1.{revs[4]}"}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["revision"] == revs[4], r.text
    s, rev = scores(server, items, dense)
    assert rev == revs[4] and np.array_equal(s, outs[4])
    assert httpx.post(server.url + "/v1/admin/models/m/rollback", json={"revision": "1.999"}, headers=AUTH).status_code == 404
    assert httpx.post(server.url + "/v1/admin/models/m/rollback", json={"revision": "seven"}, headers=AUTH).status_code == 400


def test_concurrent_writers_with_expect_revision_get_409(emb):
    server, _ = emb
    rev = served_revision(server)
    results = []
    barrier = threading.Barrier(6)

    def write(i):
        barrier.wait(10)
        results.append(update(server, {"updates": [{"name": "head.bias", "values": [float(i)]}], "expect_revision": rev}))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [409] * 5, [(r.status_code, r.text[:100]) for r in results]
    assert served_revision(server) == rev + 1


def test_compact_folds_the_deltas_into_a_new_version(emb):
    """Last in the module: it moves the shared server to version 2."""
    server, base = emb
    items, dense = np.arange(ROWS), np.ones((ROWS, DENSE), np.float32)
    before, rev = scores(server, items, dense)
    assert rev > 0
    out = subprocess.run([sys.executable, "-m", "hotserve", "compact", "m", "--url", server.url, "--token", TOKEN],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"published version 2 from version 1 revision {rev}" in out.stdout, out.stderr
    wait_for(lambda: predict(server, [0], [[0] * DENSE]).headers.get("x-model-version") == "2", 30, "version 2 to serve")
    after, rev2 = scores(server, items, dense)
    assert rev2 == 0 and np.allclose(after, before, atol=1e-6)
    lineage = json.load(open(os.path.join(base, "2", "hotserve_manifest.json")))["lineage"]
    assert lineage["source"] == "compact" and lineage["parent"] == 1 and lineage["revision"] == rev
    assert not os.path.exists(os.path.join(base, "2", "deltas"))


def test_kill_9_after_the_200_then_restart_serves_the_same_revision(tmp_path):
    base, build = str(tmp_path / "models" / "m"), str(tmp_path / "build")
    _publish_model(base, build)
    server = _start(tmp_path, base, name="a")
    items, dense = np.arange(ROWS), np.ones((ROWS, DENSE), np.float32)
    try:
        for i in range(3):
            r = update(server, {"updates": [{"name": "item_embedding", "rows": [i, 100 + i], "values": [[i + 0.5] * DIM] * 2}]})
            assert r.status_code == 200
        r = httpx.post(server.url + "/v1/admin/models/m/rollback", json={"revision": "1.2"}, headers=AUTH, timeout=30)
        assert r.status_code == 200
        r = update(server, {"updates": [{"name": "head.bias", "values": [2.0]}]})
        assert r.status_code == 200 and r.json()["revision"] == 4  # revisions are never reused: 4 is built on 2
        want, rev = scores(server, items, dense)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    finally:
        server.stop()
    again = _start(tmp_path, base, name="b")
    try:
        got, rev2 = scores(again, items, dense)
        assert rev2 == rev == 4 and np.array_equal(got, want)
        assert "replayed 5 delta log entries (load)" in again.log()
    finally:
        again.stop()


def test_two_workers_converge(tmp_path):
    base, build = str(tmp_path / "models" / "m"), str(tmp_path / "build")
    _publish_model(base, build)
    server = _start(tmp_path, base, "--num_workers", "2", name="workers")
    try:
        wait_for(lambda: all(f"[worker {w}] hotserve.manager: model m version 1: available" in server.log() for w in (0, 1)),
                 30, "both workers to load")
        for i in range(3):
            # Fresh connections: the writes land on either worker; each follows the other's log entries.
            r = update(server, {"updates": [{"name": "item_embedding", "rows": [i], "values": [[float(i)] * DIM]}]})
            assert r.status_code == 200, r.text
        want = r.json()["revision"]

        def converged() -> bool:
            text = httpx.get(server.url + "/metrics", timeout=10).text
            found = re.findall(r'hotserve_model_revision\{model="m",version="1",worker="(\d)"\} (\d+)', text)
            return sorted(found) == [("0", str(want)), ("1", str(want))]

        wait_for(converged, 20, "both workers to serve the newest revision")
        outs = {tuple(scores(server, [0, 1, 2], np.zeros((3, DENSE), np.float32))[0].ravel()) for _ in range(10)}
        assert len(outs) == 1
    finally:
        server.stop()


def _gated_model(gate: str, entered: str) -> str:
    return textwrap.dedent(f"""
        import os, time
        import numpy as np

        SIGNATURE = {{"inputs": {{"x": ("float32", [-1, 4])}}, "outputs": {{"y": ("float32", [-1, 4])}}}}
        PARAMETERS = {{"offset": np.zeros(4, np.float32)}}

        def predict(inputs, params):
            x = inputs["x"]
            offset = params["offset"]  # the bound revision's tensor, read before blocking
            if x.size and x.flat[0] == 999.0:
                open({entered!r}, "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists({gate!r}) and time.monotonic() < deadline:
                    time.sleep(0.01)
            return {{"y": x + offset}}
    """)


def test_a_request_in_flight_across_a_delta_answers_with_the_old_revision(tmp_path):
    gate, entered = str(tmp_path / "gate"), str(tmp_path / "entered")
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.py").write_text(_gated_model(gate, entered))
    base = str(tmp_path / "models" / "m")
    publish(str(src), base, 1)
    server = _start(tmp_path, base, name="py")
    try:
        held = {}

        def slow():
            held["r"] = httpx.post(server.url + "/v1/models/m:predict", json={"instances": [[999.0, 0, 0, 0]]}, timeout=60)

        t = threading.Thread(target=slow)
        t.start()
        wait_for(lambda: os.path.exists(entered), 20, "the request to be inside the model")
        r = update(server, {"updates": [{"name": "offset", "values": [5.0, 5.0, 5.0, 5.0]}]})
        assert r.status_code == 200 and r.json()["revision"] == 1, r.text
        fresh = httpx.post(server.url + "/v1/models/m:predict", json={"instances": [[1.0, 0, 0, 0]]}, timeout=30)
        assert fresh.headers["x-model-revision"] == "1" and fresh.json()["predictions"] == [[6.0, 5.0, 5.0, 5.0]]
        open(gate, "w").close()
        t.join(60)
        old = held["r"]
        assert old.status_code == 200 and old.headers["x-model-revision"] == "0"
        assert old.json()["predictions"] == [[999.0, 0.0, 0.0, 0.0]]  # the old revision's offset, 0
    finally:
        server.stop()


def test_a_runtime_without_deltas_says_so(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.py").write_text(textwrap.dedent("""
        SIGNATURE = {"inputs": {"x": ("float32", [-1, 4])}, "outputs": {"y": ("float32", [-1, 4])}}
        def predict(inputs):
            return {"y": inputs["x"]}
    """))
    base = str(tmp_path / "models" / "m")
    publish(str(src), base, 1)
    server = _start(tmp_path, base, name="nodelta")
    try:
        r = update(server, {"updates": [{"name": "w", "values": [1.0]}]})
        assert r.status_code == 400 and "takes no parameter deltas" in r.json()["error"] and "PARAMETERS" in r.json()["error"]
        meta = json.loads(server.get("/v1/models/m/metadata")[1])["parameters"]
        assert meta["updatable"] is False and "PARAMETERS" in meta["reason"]
    finally:
        server.stop()


def test_the_guard_reverts_a_delta_that_makes_the_online_metric_worse(tmp_path):
    base, build = str(tmp_path / "models" / "m"), str(tmp_path / "build")
    _publish_model(base, build)
    server = _start(tmp_path, base, "--learning_dir", str(tmp_path / "learn"), "--parameter_guard_margin", "0.01",
                    "--parameter_guard_examples", "40", name="guard")
    try:
        items = np.arange(40)
        dense = np.random.default_rng(3).standard_normal((40, DENSE)).astype(np.float32)
        truth, _ = scores(server, items, dense)  # the labels the world will report: revision 0 is right

        def feedback() -> None:
            ex = [{"inputs": {"item": int(i), "dense": d.tolist()}, "label": [float(t[0])]} for i, d, t in zip(items, dense, truth)]
            r = httpx.post(server.url + "/v1/models/m:feedback", json={"examples": ex}, timeout=30)
            assert r.status_code == 200, r.text

        after = json.loads(server.get("/v1/events?after=0")[1])["last"]
        bad = update(server, {"updates": [{"name": "item_embedding", "rows": list(range(20)), "values": [[3.0] * DIM] * 20}]})
        assert bad.status_code == 200 and bad.json()["revision"] == 1
        feedback()
        ev = wait_event(server, "delta_reverted", after=after, source="guard")
        assert ev["revision"] == 0 and ev["from_revision"] == 1 and "mse" in ev["reason"] and "margin 0.01" in ev["reason"]
        back, rev = scores(server, items, dense)
        assert rev == 0 and np.array_equal(back, truth)
        assert 'hotserve_parameter_deltas_total{model="m",outcome="reverted_guard"} 1' in httpx.get(server.url + "/metrics").text
        # A harmless delta (a row no example uses) is kept.
        ok = update(server, {"updates": [{"name": "item_embedding", "rows": [999], "values": [[3.0] * DIM]}]})
        assert ok.status_code == 200 and ok.json()["revision"] == 2  # a rollback takes no revision number
        feedback()
        wait_for(lambda: re.search(r"delta guard: model m version 1 revision 2 mse 0\.0+ vs revision 0", server.log()), 20,
                 "the guard to judge revision 2")
        assert served_revision(server) == 2
    finally:
        server.stop()
