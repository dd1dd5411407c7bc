"""--model_config_file: TF Serving's text proto and YAML, several models, version policies,
reload on change, invalid files, and gRPC HandleReloadConfigRequest with a bounded wait."""

import os
import time

import grpc
import httpx
import pytest

from conftest import affine_version, python_version, status, wait_for, wait_state
from hotserve.core.config import ConfigError, CanaryConfig, load_config_file, parse_text_proto, parse_yaml
from hotserve.core.policy import All, Latest, Specific

TEXT = """
model_config_list {
  config {
    name: 'a'
    base_path: '%(a)s'
    model_platform: 'onnx'
    model_version_policy { specific { versions: 1 versions: 3 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'next' value: 3 }
  }
  config {
    name: 'b'
    base_path: '%(b)s'
    model_version_policy { all {} }
  }
}
"""

YAML = """
model_config_list:
  - name: a
    base_path: %(a)s
    model_platform: onnx
    model_version_policy: {specific: {versions: [1, 3]}}
    version_labels: {stable: 1, next: 3}
  - name: b
    base_path: %(b)s
    model_version_policy: {all: {}}
    canary: {weight: 20, auto: true, window_seconds: 5, min_requests: 10}
"""


def test_text_proto_and_yaml_parse_to_the_same_models():
    t = parse_text_proto(TEXT % {"a": "/m/a", "b": "/m/b"})
    y = parse_yaml(YAML % {"a": "/m/a", "b": "/m/b"})
    for models in (t, y):
        assert [m.name for m in models] == ["a", "b"]
        assert models[0].policy == Specific(frozenset({1, 3})) and models[1].policy == All()
        assert models[0].labels == {"stable": 1, "next": 3}
        assert models[0].base_path == "/m/a" and models[0].platform == "onnx"
    assert y[1].canary == CanaryConfig(weight=20, auto=True, window_seconds=5, min_requests=10)
    assert parse_yaml("model_config_list: [{name: c, base_path: /x, model_version_policy: {latest: {num_versions: 3}}}]")[0].policy == Latest(3)


@pytest.mark.parametrize("text, fragment", [
    ("model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }", "appears twice"),
    ("model_config_list { config { name: 'a' } }", "needs a base_path"),
    ("model_config_list { config { base_path: '/x' } }", "needs a name"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'caffe' } }", "model_platform 'caffe' unknown"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_version_policy { specific { } } } }", "lists no versions"),
    ("model_config_list { config { nme: 'a' } }", "not a valid ModelServerConfig"),
    ("", "must hold a model_config_list"),
    ("model_config_list { }", "lists no models"),
])
def test_invalid_text_proto_configs_say_what_is_wrong(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_text_proto(text)


@pytest.mark.parametrize("text, fragment", [
    ("models: []", "model_config_list key"),
    ("model_config_list: [{name: a, base_path: /x, polcy: 1}]", "unknown key(s) ['polcy']"),
    ("model_config_list: [{name: a, base_path: /x, model_version_policy: {newest: {}}}]", "unknown version policy 'newest'"),
    ("model_config_list: [{name: a, base_path: /x, canary: {weight: 150}}]", "percentage from 0 to 100"),
    ("model_config_list: [{name: a, base_path: /x, canary: {wieght: 5}}]", "unexpected keyword"),
    ("model_config_list: [{name: a, base_path: /x, version_labels: {stable: one}}]", "must be version numbers"),
    ("model_config_list: [oops", "not valid YAML"),
])
def test_invalid_yaml_configs_say_what_is_wrong(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_yaml(text)
    assert fragment in str(info.value)


def _two_models(tmp_path):
    a, b, build = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "build")
    os.makedirs(build)
    for v in (1, 2, 3):
        affine_version(a, v, build)
    for v in (1, 2):
        affine_version(b, v, build, offset=10 * v)
    return a, b, build


@pytest.mark.parametrize("fmt", ["config.pbtxt", "config.yaml"])
def test_two_models_from_one_config_file(fmt, tmp_path, start_server):
    a, b, _ = _two_models(tmp_path)
    path = tmp_path / fmt
    path.write_text((YAML if fmt.endswith("yaml") else TEXT) % {"a": a, "b": b})
    server = start_server(None, "--model_config_file", str(path))
    wait_state(server, 3, "AVAILABLE", model="a")
    wait_state(server, 2, "AVAILABLE", model="b")
    wait_state(server, 1, "AVAILABLE", model="b")  # policy all: the older version loads after the newest
    assert set(status(server, "a")) == {1, 3}  # specific {1, 3}: version 2 never loaded
    assert set(status(server, "b")) == {1, 2}  # all
    with httpx.Client() as c:
        x = {"instances": [[0, 0, 0, 0]]}
        # Label 'stable' -> 1 is the default route of a; 'next' -> 3 by label; b defaults to its newest.
        r = c.post(server.url + "/v1/models/a:predict", json=x)
        assert r.headers["x-model-version"] == "1" and r.json()["predictions"] == [[1.0] * 4]
        r = c.post(server.url + "/v1/models/a/labels/next:predict", json=x)
        assert r.headers["x-model-version"] == "3"
        assert c.post(server.url + "/v1/models/b:predict", json=x).json()["predictions"] == [[20.0] * 4]
        assert c.post(server.url + "/v1/models/b/versions/1:predict", json=x).json()["predictions"] == [[10.0] * 4]


def test_config_file_reload_on_change_and_invalid_file_keeps_running_config(tmp_path, start_server):
    a, b, _ = _two_models(tmp_path)
    path = tmp_path / "models.yaml"
    path.write_text(f"model_config_list:\n  - {{name: a, base_path: {a}}}\n")
    server = start_server(None, "--model_config_file", str(path), "--model_config_file_poll_wait_seconds", "0.2")
    wait_state(server, 3, "AVAILABLE", model="a")
    assert server.get("/v1/models/b")[0] == 404
    # Add model b and switch a to serve its two newest versions.
    path.write_text(f"model_config_list:\n  - {{name: a, base_path: {a}, model_version_policy: {{latest: {{num_versions: 2}}}}}}\n"
                    f"  - {{name: b, base_path: {b}}}\n")
    wait_state(server, 2, "AVAILABLE", model="b")
    wait_state(server, 2, "AVAILABLE", model="a")
    # A broken file is reported and changes nothing.
    path.write_text("model_config_list: [{name: a, base_path: ")
    wait_for(lambda: "is invalid" in server.log(), 10, "the invalid config to be reported")
    assert status(server, "a")[3]["state"] == "AVAILABLE" and status(server, "b")[2]["state"] == "AVAILABLE"
    _, body = server.get("/metrics")
    assert b'hotserve_config_reloads_total{outcome="invalid"}' in body
    # An unreadable config (storage outage) is reported and changes nothing either.
    os.rename(path, str(path) + ".away")
    wait_for(lambda: "is unreadable" in server.log(), 10, "the unreadable config to be reported")
    assert status(server, "a")[3]["state"] == "AVAILABLE"
    os.rename(str(path) + ".away", path)
    # Removing a model from the config unloads it.
    path.write_text(f"model_config_list:\n  - {{name: b, base_path: {b}}}\n")
    wait_for(lambda: server.get("/v1/models/a")[0] == 404, 20, "model a to be removed")
    assert httpx.post(server.url + "/v1/models/b:predict", json={"instances": [[0, 0, 0, 0]]}).status_code == 200


def test_grpc_handle_reload_config_request_bounded(tmp_path, start_server):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    a, b, build = _two_models(tmp_path)
    path = tmp_path / "models.pbtxt"
    path.write_text(f"model_config_list {{ config {{ name: 'a' base_path: '{a}' }} }}")
    server = start_server(None, "--model_config_file", str(path), "--admin_token", "tok",
                          "--reload_config_timeout_seconds", "2")
    wait_state(server, 3, "AVAILABLE", model="a")
    channel = grpc.insecure_channel(server.grpc_target)
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    auth = [("authorization", "Bearer tok")]

    def request(models):
        req = model_management_pb2.ReloadConfigRequest()
        for name, base in models:
            c = req.config.model_config_list.config.add()
            c.name, c.base_path = name, base
        return req

    resp = stub.HandleReloadConfigRequest(request([("a", a), ("b", b)]), metadata=auth, timeout=30)
    assert resp.status.error_code == 0
    assert httpx.post(server.url + "/v1/models/b:predict", json={"instances": [[0, 0, 0, 0]]}).json()["predictions"] == [[20.0] * 4]
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(request([("a", a), ("a", b)]), metadata=auth, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "appears twice" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(request([("a", a)]), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A model that takes longer than the bound: a clear UNAVAILABLE after ~2 s, not a hang.
    slow = str(tmp_path / "slow")
    python_version(slow, 1, build, load_sleep=6.0)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(request([("a", a), ("b", b), ("slow", slow)]), metadata=auth, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "'slow'" in info.value.details()
    assert time.monotonic() - t0 < 20
    wait_state(server, 1, "AVAILABLE", model="slow", timeout=30)  # loading went on in the background
    channel.close()


def test_bad_config_file_at_start_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text("model_config_list: [{name: a}]")
    out = subprocess.run([sys.executable, "-m", "hotserve", "serve", "--model_config_file", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "needs a base_path" in out.stderr
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(str(tmp_path / "absent.pbtxt"))
