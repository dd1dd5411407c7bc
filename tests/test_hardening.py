"""Hostile clients and careless operators, against real server processes: every row of the
hardening table (issue 9) as a test. Memory rows measure the server's RSS before and after."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import textwrap
import threading
import time
import zlib

import grpc
import httpx
import numpy as np
import pytest

from conftest import affine_version, status, wait_event, wait_for, wait_state
from hotserve.observability.process import rss_of
from hotserve.protos.inference import grpc_service_pb2 as v2pb
from hotserve.protos.tensorflow.core.framework import types_pb2
from hotserve.protos.tensorflow_serving.apis import predict_pb2
from hotserve.repository import manifest
from hotserve.repository.publish import publish

X = {"instances": [[1.0, 2.0, 3.0, 4.0]]}
MiB = 1 << 20


def _python_model(d, body: str) -> str:
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.py"), "w") as f:
        f.write(textwrap.dedent("""
            import os, time
            import numpy as np
            SIGNATURE = {"inputs": {"x": ("float32", [-1, 4])}, "outputs": {"y": ("float32", [-1, 4])}}
        """) + textwrap.dedent(body))
    return str(d)


def _raw(server, data: bytes, read_timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection; return what the server answers before closing."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer and close before taking everything
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def _grpc(server, method: str, request, response_cls):
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        call = channel.unary_unary(method, request_serializer=type(request).SerializeToString,
                                   response_deserializer=response_cls.FromString)
        return call(request, timeout=30)
    finally:
        channel.close()


# -- a hung model ------------------------------------------------------------------------------

def _predict_1x4(model: str) -> predict_pb2.PredictRequest:
    """A TF Serving Predict of x = [[1, 2, 3, 4]] (float_val) to `model`."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    x = req.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    x.tensor_shape.dim.add().size = 1
    x.tensor_shape.dim.add().size = 4
    x.float_val.extend([1, 2, 3, 4])
    return req

def test_a_hung_model_starves_no_other_model(tmp_path, start_server):
    gate = tmp_path / "release"
    hung = _python_model(tmp_path / "b" / "hung", f"""
        def predict(inputs):
            deadline = time.monotonic() + 60  # validation's zeros pass; real inputs hang until released
            while float(inputs["x"].sum()) != 0.0 and not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
            return {{"y": inputs["x"]}}
    """)
    publish(hung, str(tmp_path / "models" / "hung"), 1)
    affine_version(str(tmp_path / "models" / "fine"), 1, str(tmp_path / "b"))
    config = tmp_path / "models.yaml"
    config.write_text(f"model_config_list:\n  - {{name: hung, base_path: {tmp_path / 'models' / 'hung'}}}\n"
                      f"  - {{name: fine, base_path: {tmp_path / 'models' / 'fine'}}}\n")
    server = start_server(None, "--model_config_file", str(config), "--rest_api_timeout_in_ms", "1000",
                          "--max_concurrent_requests", "2", "--max_queued_requests", "2")
    statuses: list[int] = []

    def call_hung():
        with httpx.Client(timeout=30) as c:
            statuses.append(c.post(server.url + "/v1/models/hung:predict", json=X).status_code)

    threads = [threading.Thread(target=call_hung) for _ in range(10)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    # While the hung model holds its threads, the other model answers, over REST and gRPC.
    with httpx.Client(timeout=10) as c:
        for _ in range(20):
            r = c.post(server.url + "/v1/models/fine:predict", json=X)
            assert r.status_code == 200 and r.json()["predictions"] == [[2.0, 3.0, 4.0, 5.0]]
    req = _predict_1x4("fine")
    resp = _grpc(server, "/tensorflow.serving.PredictionService/Predict", req, predict_pb2.PredictResponse)
    assert resp.model_spec.version.value == 1
    for t in threads:
        t.join(30)
    assert time.monotonic() - t0 < 20
    assert set(statuses) <= {429, 503, 504} and 504 in statuses, statuses
    # Every thread of the hung model is stuck: it is degraded, refused at once, and /readyz names it.
    wait_event(server, "model_degraded", model="hung", degraded=True)
    r = httpx.post(server.url + "/v1/models/hung:predict", json=X, timeout=10)
    assert r.status_code == 503 and "degraded" in r.json()["error"]
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 503 and "hung" in ready.json()["degraded"] and ready.json()["models"]["fine"]
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert 'hotserve_model_degraded{model="hung"} 1' in httpx.get(server.url + "/metrics").text
    gate.write_text("")  # the model returns: it recovers
    wait_event(server, "model_degraded", model="hung", degraded=False)
    wait_for(lambda: httpx.get(server.url + "/readyz").status_code == 200, 10, "readiness to come back")
    assert httpx.post(server.url + "/v1/models/hung:predict", json=X, timeout=10).status_code == 200


# -- tiny requests that declare huge tensors ----------------------------------------------------------
@pytest.fixture
def served(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    return start_server(base)


def _v2_binary(shape: list, datatype: str, payload: bytes) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": len(payload)}}]}).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header)),
                              "Content-Type": "application/octet-stream"}


def test_v2_binary_shape_claims_are_refused_before_allocating(served):
    rss0 = rss_of(served.proc.pid)
    with httpx.Client(timeout=30) as c:
        for shape in ([400_000_000], [10**12]):
            body, headers = _v2_binary(shape, "BYTES", b"\x00\x00\x00\x00")
            t0 = time.monotonic()
            r = c.post(served.url + "/v2/models/m/infer", content=body, headers=headers)
            assert r.status_code == 400, r.text
            assert "cannot hold" in r.json()["error"] and time.monotonic() - t0 < 5
        body, headers = _v2_binary([2**32, 2**32], "FP32", b"")
        r = c.post(served.url + "/v2/models/m/infer", content=body, headers=headers)
        assert r.status_code == 400 and "more elements than any array can hold" in r.json()["error"]
    assert rss_of(served.proc.pid) - rss0 < 64 * MiB


def test_grpc_broadcasts_and_raw_bytes_are_refused_cheaply(served):
    rss0 = rss_of(served.proc.pid)
    for dtype, field, value in ((types_pb2.DT_FLOAT, "float_val", 1.0), (types_pb2.DT_STRING, "string_val", b"a")):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "m"
        t = req.inputs["x"]
        t.dtype = dtype
        t.tensor_shape.dim.add().size = 300_000_000
        getattr(t, field).append(value)
        with pytest.raises(grpc.RpcError) as exc:
            _grpc(served, "/tensorflow.serving.PredictionService/Predict", req, predict_pb2.PredictResponse)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.value.details()
        assert "--max_request_tensor_bytes" in exc.value.details()
    req = v2pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="BYTES", shape=[300_000_000])
    req.raw_input_contents.append(b"\x01\x00\x00\x00a")
    with pytest.raises(grpc.RpcError) as exc:
        _grpc(served, "/inference.GRPCInferenceService/ModelInfer", req, v2pb.ModelInferResponse)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot hold" in exc.value.details()
    assert rss_of(served.proc.pid) - rss0 < 64 * MiB


def test_v2_grpc_huge_shape_with_no_contents_is_invalid_argument(served):
    req = v2pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP32", shape=[2**32, 2**32])
    with pytest.raises(grpc.RpcError) as exc:
        _grpc(served, "/inference.GRPCInferenceService/ModelInfer", req, v2pb.ModelInferResponse)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shape [4294967296, 4294967296] describes more elements than any array can hold" in exc.value.details()


# -- bodies and headers ----------------------------------------------------------------------------
def test_a_gzip_bomb_is_refused_with_413(served):
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    bomb = b"".join(packer.compress(zeros) for _ in range(1024)) + packer.flush()  # 1 GiB inflated
    assert len(bomb) < 2 * MiB
    rss0 = rss_of(served.proc.pid)
    t0 = time.monotonic()
    r = httpx.post(served.url + "/v2/models/m/infer", content=bomb, headers={"Content-Encoding": "gzip"}, timeout=30)
    assert r.status_code == 413 and "inflates to more than" in r.json()["error"]
    assert time.monotonic() - t0 < 10
    assert rss_of(served.proc.pid) - rss0 < 200 * MiB


def test_body_over_the_limit_is_refused_before_it_is_read(served):
    t0 = time.monotonic()
    answer = _raw(served, b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"--rest_api_max_body_bytes" in answer
    assert time.monotonic() - t0 < 5
    # A chunked body is counted as it arrives.
    head = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (MiB, b"1" * MiB)
    answer = _raw(served, head + chunk * 70)
    assert answer.startswith(b"HTTP/1.1 413")


def test_huge_or_too_many_headers_get_431(served):
    big = _raw(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MiB + b"\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 431")
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(10_000))
    assert _raw(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431")
    assert httpx.get(served.url + "/healthz").status_code == 200


def test_slow_and_idle_connections_are_closed(repo, start_server):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--rest_api_header_timeout_seconds", "1", "--rest_api_body_timeout_seconds", "1",
                          "--rest_api_idle_timeout_seconds", "1")
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    slow_headers, slow_bodies, idle = [], [], []
    try:
        for i in range(1000):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.setblocking(False)
            if i % 2:
                s.send(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n")  # headers never finish
                slow_headers.append(s)
            else:
                s.send(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # nor bodies
                slow_bodies.append(s)
        for _ in range(2000):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        # Others are served meanwhile.
        assert httpx.post(server.url + "/v1/models/m:predict", json=X, timeout=10).status_code == 200
        deadline = time.monotonic() + 30
        open_ = slow_headers + slow_bodies + idle
        answers: dict[int, bytes] = {}
        while open_ and time.monotonic() < deadline:
            still = []
            for s in open_:
                try:
                    if s in slow_headers:
                        s.send(b"X")  # trickle: a byte now and then never extends the deadline
                    data = s.recv(4096)
                except (BlockingIOError, socket.timeout):
                    still.append(s)
                    continue
                except OSError:
                    continue  # reset by the server: closed
                if data:
                    answers[s.fileno()] = data
                    still.append(s) if not data else None
            open_ = [s for s in still if s.fileno() not in answers or answers[s.fileno()]]
            open_ = [s for s in open_ if not _closed(s)]
            time.sleep(0.2)
            for s in idle:
                s.setblocking(False)
        assert not open_, f"{len(open_)} connection(s) still open after 30 s"
    finally:
        for s in slow_headers + slow_bodies + idle:
            s.close()
    assert httpx.post(server.url + "/v1/models/m:predict", json=X, timeout=10).status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert 'hotserve_limit_rejections_total{model="",limit="read_timeout"}' in metrics


def _closed(s: socket.socket) -> bool:
    try:
        data = s.recv(65536, socket.MSG_PEEK)
    except (BlockingIOError, socket.timeout):
        return False
    except OSError:
        return True
    if data == b"":
        return True
    # An answer (408) then EOF: read it all to see the EOF.
    try:
        while s.recv(65536):
            pass
    except (BlockingIOError, socket.timeout):
        return False
    except OSError:
        return True
    return True


# -- load shedding ------------------------------------------------------------------------------------
def test_overload_is_shed_at_once_and_admitted_requests_meet_their_timeout(tmp_path, start_server):
    slow = _python_model(tmp_path / "b" / "slow", """
        def predict(inputs):
            time.sleep(0.05)
            return {"y": inputs["x"]}
    """)
    base = str(tmp_path / "models" / "m")
    publish(slow, base, 1)
    server = start_server(base, "--max_concurrent_requests", "2", "--max_queued_requests", "8",
                          "--rest_api_timeout_in_ms", "2000")

    async def blast() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
        async with httpx.AsyncClient(timeout=30, limits=limits) as c:
            return await asyncio.gather(*(c.post(server.url + "/v1/models/m:predict", json=X) for _ in range(512)))

    replies = asyncio.run(blast())
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 429}, sorted(set(codes))
    assert codes.count(200) >= 10 and codes.count(429) >= 100
    assert all(int(r.headers["retry-after"]) >= 1 for r in replies if r.status_code == 429)
    assert "at capacity" in next(r for r in replies if r.status_code == 429).json()["error"]


# -- repository faults ------------------------------------------------------------------------------------
def _without_dac_override() -> list[str] | None:
    """Root reads any directory; without these capabilities it obeys permissions like a service user."""
    if os.geteuid() != 0:
        return []
    import shutil

    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"] if setpriv else None


def test_unreadable_versions_keep_serving_or_end_with_the_reason(repo, start_server):
    prefix = _without_dac_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to bind")
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, prefix=prefix)
    os.chmod(os.path.join(base, "1"), 0)
    try:
        wait_event(server, "notice", what="unreadable", version=1)
        r = httpx.post(server.url + "/v1/models/m:predict", json=X, timeout=10)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        st = status(server)[1]
        assert st["state"] == "AVAILABLE" and "Permission denied" in st["status"]["error_message"]
        # A new version that cannot be read appears in status as END with the reason.
        os.makedirs(os.path.join(base, "2"))
        os.chmod(os.path.join(base, "2"), 0)
        wait_state(server, 2, "END")
        assert "Permission denied" in status(server)[2]["status"]["error_message"]
        # One holding a symlink loop too.
        os.makedirs(os.path.join(base, "3"))
        os.symlink(".", os.path.join(base, "3", "loop"))
        wait_state(server, 3, "END")
        assert "symlink loop" in status(server)[3]["status"]["error_message"]
        r = httpx.post(server.url + "/v1/models/m:predict", json=X, timeout=10)
        assert r.headers["x-model-version"] == "1"
    finally:
        os.chmod(os.path.join(base, "1"), 0o755)
        if os.path.exists(os.path.join(base, "2")):
            os.chmod(os.path.join(base, "2"), 0o755)
    wait_for(lambda: "error_message" not in status(server)[1]["status"] or not status(server)[1]["status"]["error_message"],
             10, "the unreadable note to clear")


def test_stale_staging_directories_are_removed(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    stale = os.path.join(base, ".staging-9-deadbeef")
    os.makedirs(stale)
    with open(os.path.join(stale, "model.onnx"), "wb") as f:
        f.write(b"half a model")
    old = time.time() - 2 * 3600
    os.utime(os.path.join(stale, "model.onnx"), (old, old))
    os.utime(stale, (old, old))
    fresh = os.path.join(base, ".staging-10-cafe")  # a publish in progress: left alone
    os.makedirs(fresh)
    server = start_server(base)
    wait_for(lambda: not os.path.exists(stale), 10, "the stale staging directory to go")
    assert os.path.exists(fresh) and "a publish abandoned" in server.log()


def test_a_thousand_versions_cost_near_nothing_at_idle(repo, start_server):
    base, build = repo
    src = _python_model(os.path.join(build, "p"), 'def predict(inputs):\n    return {"y": inputs["x"]}\n')
    from hotserve.repository.storage import LocalStorage

    files = LocalStorage().stat_files(src)
    doc = manifest.encode(manifest.build_manifest(src, files))
    body = open(os.path.join(src, "model.py"), "rb").read()
    for v in range(1, 1001):
        d = os.path.join(base, str(v))
        os.makedirs(d)
        with open(os.path.join(d, "model.py"), "wb") as f:
            f.write(body)
        with open(os.path.join(d, manifest.MANIFEST_NAME), "wb") as f:
            f.write(doc)
    server = start_server(base, "--file_system_poll_wait_seconds", "1")
    wait_state(server, 1000, "AVAILABLE")

    def cpu() -> float:
        with open(f"/proc/{server.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    time.sleep(1.0)  # let start-up work finish (the first full listing, the inotify watches)
    c0, t0 = cpu(), time.monotonic()
    time.sleep(4.0)  # idle on purpose: what is measured is what idling costs
    share = (cpu() - c0) / (time.monotonic() - t0)
    assert share < 0.05, f"idle server with 1,000 versions used {share:.1%} of a core"


# -- errors and secrets ------------------------------------------------------------------------------------
def test_a_models_own_value_error_is_a_500_naming_the_version(tmp_path, start_server):
    src = _python_model(tmp_path / "b" / "v", """
        def predict(inputs):
            if float(inputs["x"].sum()) != 0.0:
                raise ValueError("this model is broken for nonzero input")
            return {"y": inputs["x"]}
    """)
    base = str(tmp_path / "models" / "m")
    publish(src, base, 1)
    server = start_server(base)
    r = httpx.post(server.url + "/v1/models/m:predict", json=X, timeout=10)
    assert r.status_code == 500 and r.headers["x-model-version"] == "1"
    assert "ValueError: this model is broken" in r.json()["error"]
    req = _predict_1x4("m")
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                      request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                      response_deserializer=predict_pb2.PredictResponse.FromString)
        with pytest.raises(grpc.RpcError) as exc:
            predict.with_call(req, timeout=10)
        assert exc.value.code() == grpc.StatusCode.INTERNAL
        assert dict(exc.value.trailing_metadata()).get("x-model-version") == "1"
    finally:
        channel.close()
    assert 'model_version="1",API="predict",entrypoint="GRPC",status="INTERNAL"' in httpx.get(server.url + "/metrics").text


def test_admin_token_from_a_file_and_a_warning_for_the_flag(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    server = start_server(base, "--admin_token_file", str(token))
    auth = {"Authorization": "Bearer s3cret"}
    assert httpx.get(server.url + "/v1/admin/models/m", headers=auth).status_code == 200
    assert httpx.get(server.url + "/v1/admin/models/m").status_code == 401
    flagged = start_server(base, "--admin_token", "visible")
    assert "readable by every local user" in flagged.log()


def test_long_names_are_cut_in_messages(served):
    name = "n" * 8192
    r = httpx.get(f"{served.url}/v1/models/{name}", timeout=10)
    assert r.status_code == 404 and len(r.content) < 1024 and "(8192 characters)" in r.json()["error"]
