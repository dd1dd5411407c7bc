"""TF Serving's REST API: status, metadata, predict formats, errors and their HTTP codes."""

import base64
import os

import httpx
import pytest

from conftest import affine_version, status
from hotserve.examples import make_two_io
from hotserve.repository.publish import publish


def test_status_shape(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    with httpx.Client() as c:
        # Exactly TF Serving's fields (a version that took deltas adds its revision: test_parameters).
        assert c.get(server.url + "/v1/models/m").json() == {
            "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
        }
        assert c.get(server.url + "/v1/models/m/versions/1").json()["model_version_status"][0]["version"] == "1"
        r = c.get(server.url + "/v1/models/m/versions/7")
        assert r.status_code == 404 and "version 7" in r.json()["error"]


def test_metadata_shape(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    doc = httpx.get(server.url + "/v1/models/m/metadata").json()
    assert doc["model_spec"] == {"name": "m", "signature_name": "", "version": "1"}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["x"] == {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "4", "name": ""}], "unknown_rank": False},
        "name": "x",
    }
    assert sig["outputs"]["y"]["dtype"] == "DT_FLOAT"


@pytest.fixture
def two_io_server(repo, start_server, tmp_path):
    base, _ = repo
    publish(make_two_io(str(tmp_path / "two" / "model.onnx"), offset=0.5), base, 1)
    return start_server(base)


def test_row_and_columnar_formats_with_several_inputs_and_outputs(two_io_server):
    url = two_io_server.url + "/v1/models/m:predict"
    with httpx.Client() as c:
        rows = c.post(url, json={"instances": [{"a": [1, 2, 3], "b": 4}, {"a": [0, 0, 0], "b": -1}]}).json()
        assert rows == {"predictions": [{"sum": [1.5, 2.5, 3.5], "b_out": 8}, {"sum": [0.5, 0.5, 0.5], "b_out": -2}]}
        cols = c.post(url, json={"inputs": {"a": [[1, 2, 3]], "b": [4]}}).json()
        assert cols == {"outputs": {"sum": [[1.5, 2.5, 3.5]], "b_out": [8]}}
        assert c.post(url, json={"signature_name": "serving_default", "inputs": {"a": [[1, 2, 3]], "b": [4]}}).status_code == 200


def test_single_input_formats(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    url = server.url + "/v1/models/m:predict"
    with httpx.Client() as c:
        assert c.post(url, json={"instances": [[1, 2, 3, 4]]}).json() == {"predictions": [[2, 3, 4, 5]]}
        assert c.post(url, json={"instances": [{"x": [1, 2, 3, 4]}]}).json() == {"predictions": [[2, 3, 4, 5]]}
        assert c.post(url, json={"inputs": [[1, 2, 3, 4]]}).json() == {"outputs": [[2, 3, 4, 5]]}
        assert c.post(url, json={"inputs": {"x": [[1, 2, 3, 4]]}}).json() == {"outputs": [[2, 3, 4, 5]]}


def test_b64_string_inputs_and_tf_serving_string_output_rule(repo, start_server, tmp_path):
    base, _ = repo
    d = tmp_path / "strmodel"
    d.mkdir()
    (d / "model.py").write_text(
        "import numpy as np\n"
        "SIGNATURE = {'inputs': {'s': ('object', [-1])},\n"
        "             'outputs': {'n': ('int64', [-1]), 'echo': ('object', [-1]), 'echo_bytes': ('object', [-1])}}\n"
        "def predict(inputs):\n"
        "    s = inputs['s']\n"
        "    return {'n': np.array([len(v) for v in s], dtype=np.int64), 'echo': s, 'echo_bytes': s}\n"
    )
    publish(str(d), base, 1)
    server = start_server(base)
    raw = bytes(range(256))
    r = httpx.post(server.url + "/v1/models/m:predict",
                   json={"instances": [{"b64": base64.b64encode(raw).decode()}, "hello"]})
    assert r.status_code == 200, r.text
    b64 = base64.b64encode(raw).decode()
    # Outputs named *_bytes are base64 objects; others are text (base64 only when not UTF-8).
    assert r.json() == {"predictions": [
        {"n": 256, "echo": {"b64": b64}, "echo_bytes": {"b64": b64}},
        {"n": 5, "echo": "hello", "echo_bytes": {"b64": base64.b64encode(b"hello").decode()}},
    ]}
    r = httpx.post(server.url + "/v1/models/m:predict", json={"inputs": ["a", "bc"]})
    assert r.json() == {"outputs": {"n": [1, 2], "echo": ["a", "bc"], "echo_bytes": [{"b64": "YQ=="}, {"b64": "YmM="}]}}
    r = httpx.post(server.url + "/v1/models/m:predict", json={"instances": [{"b64": "!!not base64!!"}]})
    assert r.status_code == 400 and "base64" in r.json()["error"]


BAD_REQUESTS = [
    (b"", "empty request body"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"{}", "exactly one of 'instances'"),
    (b'{"instances": [[1,2,3,4]], "inputs": [[1,2,3,4]]}', "it holds both"),
    (b'{"instances": {"x": 1}}', "'instances' must be a list"),
    (b'{"instances": []}', "'instances' is empty"),
    (b'{"instances": [[1, 2]]}', "expected shape [-1, 4], got [1, 2]"),
    (b'{"instances": [1, 2, 3, 4]}', "expected shape [-1, 4], got [4]"),
    (b'{"instances": [[1, 2, 3, 4], [1]]}', "ragged"),
    (b'{"instances": [["a", "b", "c", "d"]]}', "expected DT_FLOAT values"),
    (b'{"instances": [[{"b64": "AAAA"}, 1, 2, 3]]}', "expected DT_FLOAT values"),
    (b'{"instances": [{"z": [1, 2, 3, 4]}]}', "missing ['x']"),
    (b'{"instances": [{"x": [1, 2, 3, 4]}, [1, 2, 3, 4]]}', "mixes named objects and bare values"),
    (b'{"inputs": {"z": [[1, 2, 3, 4]]}}', "unexpected ['z']"),
    (b'{"signature_name": "nope", "instances": [[1, 2, 3, 4]]}', '"nope" not found in signature def'),
    (b'{"signature_name": 5, "instances": [[1, 2, 3, 4]]}', "'signature_name' must be a string"),
]


def test_bad_input_gets_400_with_clear_message_and_server_keeps_serving(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    url = server.url + "/v1/models/m:predict"
    with httpx.Client() as c:
        for body, fragment in BAD_REQUESTS:
            r = c.post(url, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (body, r.status_code, r.text)
            assert fragment in r.json()["error"], (body, r.json())
        r = c.post(url, json={"instances": [[1, 2, 3, 4]]})
        assert r.status_code == 200 and r.json() == {"predictions": [[2, 3, 4, 5]]}
    assert status(server)[1]["state"] == "AVAILABLE"
    assert server.proc.poll() is None


def test_wrong_dtypes_for_integer_inputs(two_io_server):
    url = two_io_server.url + "/v1/models/m:predict"
    r = httpx.post(url, json={"inputs": {"a": [[1, 2, 3]], "b": [1.5]}})
    assert r.status_code == 400 and "expected DT_INT64" in r.json()["error"]
    r = httpx.post(url, json={"inputs": {"a": [[1, 2, 3]], "b": [[1]]}})
    assert r.status_code == 400 and "'b': expected shape [-1], got [1, 1]" in r.json()["error"]
    r = httpx.post(url, json={"instances": [[1, 2, 3]]})
    assert r.status_code == 400 and "2 inputs" in r.json()["error"]


def test_http_status_mapping(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    with httpx.Client() as c:
        u = server.url
        body = {"instances": [[1, 2, 3, 4]]}
        assert c.post(u + "/v1/models/nope:predict", json=body).status_code == 404
        assert c.post(u + "/v1/models/m/versions/9:predict", json=body).status_code == 404
        r = c.post(u + "/v1/models/m/versions/abc:predict", json=body)
        assert r.status_code == 400 and "non-negative integer" in r.json()["error"]
        assert c.get(u + "/v1/models/m:predict").status_code == 405
        assert c.post(u + "/v1/models/m:explode", json=body).status_code == 404
        assert c.get(u + "/v1/nothing").status_code == 404
        assert c.get(u + "/v1/models/m/labels/stable").status_code == 404
        assert c.get(u + "/v1/models/nope").status_code == 404


def test_not_ready_until_a_version_is_available(repo, start_server):
    base, build = repo
    os.makedirs(base)
    server = start_server(base, wait_ready=False)
    with httpx.Client() as c:
        assert c.get(server.url + "/healthz").status_code == 200
        assert c.get(server.url + "/readyz").status_code == 503
        assert c.get(server.url + "/v2/health/ready").status_code == 503
        r = c.post(server.url + "/v1/models/m:predict", json={"instances": [[1, 2, 3, 4]]})
        assert r.status_code == 503 and "no version loaded yet" in r.json()["error"]
        affine_version(base, 1, build)
        server.wait_ready()
        assert c.get(server.url + "/readyz").json() == {"ready": True, "models": {"m": True}}
        assert c.post(server.url + "/v1/models/m:predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 200
