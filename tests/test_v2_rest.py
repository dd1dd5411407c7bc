"""KServe V2 REST with Triton's own HTTP client (JSON and binary tensors), the repository
extension, and hot swaps under tritonclient load."""

from functools import partial

import httpx
import numpy as np
import pytest

from clients import FamilyClients, triton_http
from conftest import affine_version, status, wait_for, wait_state
from hotserve.examples import make_two_io
from hotserve.repository.publish import publish

httpclient = pytest.importorskip("tritonclient.http")


def _client(server):
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=30)


def _infer(client, x, binary=True, binary_out=True, model="m", version=""):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary_out)
    return client.infer(model, [inp], model_version=version, outputs=[out])


def test_health_metadata_and_infer_json_and_binary(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    c = _client(server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("m")
    assert not c.is_model_ready("m", "7")
    meta = c.get_server_metadata()
    assert meta["name"] == "hotserve" and "binary_tensor_data" in meta["extensions"]
    mm = c.get_model_metadata("m")
    assert mm["versions"] == ["1"] and mm["platform"] == "onnxruntime_onnx"
    assert mm["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for binary in (True, False):
        for binary_out in (True, False):
            res = _infer(c, x, binary, binary_out)
            np.testing.assert_array_equal(res.as_numpy("y"), x + 1)
            assert res.get_response()["model_version"] == "1"
    res = _infer(c, x, version="1")
    np.testing.assert_array_equal(res.as_numpy("y"), x + 1)
    c.close()


def test_several_inputs_mixed_dtypes(repo, start_server, tmp_path):
    base, _ = repo
    publish(make_two_io(str(tmp_path / "two" / "model.onnx"), offset=1.0), base, 1)
    server = start_server(base)
    c = _client(server)
    a = httpclient.InferInput("a", [2, 3], "FP32")
    a.set_data_from_numpy(np.ones((2, 3), np.float32))
    b = httpclient.InferInput("b", [2], "INT64")
    b.set_data_from_numpy(np.array([5, -7], np.int64), binary_data=False)
    res = c.infer("m", [a, b])
    np.testing.assert_array_equal(res.as_numpy("sum"), np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(res.as_numpy("b_out"), [10, -14])
    c.close()


def test_bytes_tensors(repo, start_server, tmp_path):
    base, _ = repo
    d = tmp_path / "strmodel"
    d.mkdir()
    (d / "model.py").write_text(
        "import numpy as np\n"
        "SIGNATURE = {'inputs': {'s': ('object', [-1])}, 'outputs': {'u': ('object', [-1])}}\n"
        "def predict(inputs):\n"
        "    return {'u': np.array([v.upper() for v in inputs['s']], dtype=object)}\n"
    )
    publish(str(d), base, 1)
    server = start_server(base)
    c = _client(server)
    data = np.array([b"abc", b"", b"hello world"], dtype=object)
    for binary in (True, False):
        inp = httpclient.InferInput("s", [3], "BYTES")
        inp.set_data_from_numpy(data, binary_data=binary)
        res = c.infer("m", [inp], outputs=[httpclient.InferRequestedOutput("u", binary_data=binary)])
        got = [v if isinstance(v, bytes) else v.encode() for v in res.as_numpy("u")]  # JSON data comes back as str
        assert got == [b"ABC", b"", b"HELLO WORLD"]
    c.close()


def test_v2_errors_are_clear(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    url = server.url + "/v2/models/m/infer"
    good = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    cases = [
        ({"inputs": [{**good, "shape": [1, 3]}]}, "shape [1, 3] needs 3"),
        ({"inputs": [{**good, "datatype": "FP99"}]}, "unsupported datatype 'FP99'"),
        ({"inputs": [{**good, "datatype": "INT32"}]}, "expected dtype DT_FLOAT, got DT_INT32"),
        ({"inputs": [{**good, "name": "z"}]}, "unexpected input(s) 'z'"),
        ({"inputs": []}, "'inputs' must be a non-empty list"),
        ({"inputs": [good], "outputs": [{"name": "nope"}]}, "unknown output(s) ['nope']"),
        ({"inputs": [{**good, "data": ["a", "b", "c", "d"]}]}, "does not hold FP32 values"),
    ]
    with httpx.Client() as c:
        for body, fragment in cases:
            r = c.post(url, json=body)
            assert r.status_code == 400, (body, r.text)
            assert fragment in r.json()["error"], (body, r.json())
        r = c.post(url, content=b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}',
                   headers={"Inference-Header-Content-Length": "200"})
        assert r.status_code == 400 and "Inference-Header-Content-Length is 200" in r.json()["error"]
        assert c.post(server.url + "/v2/models/nope/infer", json={"inputs": [good]}).status_code == 404
        assert c.get(url).status_code == 405
        r = c.post(url, json={"inputs": [good]})
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 3, 4, 5]


def test_repository_extension_index_unload_load(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--admin_token", "s3cret")
    c = _client(server)
    index = c.get_model_repository_index()
    assert index == [{"name": "m", "version": "1", "state": "READY", "reason": ""}]
    r = httpx.post(server.url + "/v2/repository/models/m/unload")
    assert r.status_code == 401 and "admin token" in r.json()["error"]
    assert c.is_model_ready("m")
    auth = {"Authorization": "Bearer s3cret"}
    c.unload_model("m", headers=auth)
    assert not c.is_model_ready("m")
    assert status(server)[1]["state"] == "END"
    # An explicitly unloaded model stays unloaded while new versions arrive...
    affine_version(base, 2, build)
    with httpx.Client() as h:
        wait_for(lambda: server.get("/v1/models/m")[0] == 200, 5)
        r = h.post(server.url + "/v2/models/m/infer", json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]})
        assert r.status_code == 503
    assert c.is_server_ready()  # an operator's unload does not take the pod out of service
    # ...and load picks up the newest complete version at once.
    c.load_model("m", headers=auth)
    assert c.is_model_ready("m") and c.get_model_metadata("m")["versions"] == ["2"]
    np.testing.assert_array_equal(_infer(c, np.zeros((1, 4), np.float32)).as_numpy("y"), np.full((1, 4), 2.0, np.float32))
    c.close()


def test_repository_changes_are_off_without_a_token(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    r = httpx.post(server.url + "/v2/repository/models/m/unload", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and "--admin_token" in r.json()["error"]
    assert httpx.post(server.url + "/v2/repository/index").status_code == 200  # reading stays open


def test_hot_swaps_under_tritonclient_http_load(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    # Odd clients send and receive binary tensors, even ones JSON.
    families = [(f"client {i}", partial(triton_http, binary=bool(i % 2))) for i in range(3)]
    with FamilyClients(server, families) as clients:
        for v in range(2, 7):
            affine_version(base, v, build)
            wait_state(server, v, "AVAILABLE")
            wait_for(lambda: v in clients.versions(), 20, f"version {v} to serve")
    assert clients.errors == []
    assert set(range(1, 7)) <= clients.versions()
