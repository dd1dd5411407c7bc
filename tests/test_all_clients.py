"""The drop-in promise in one test: one server, versions alternating between ONNX and
SavedModel, and all four client families (plain HTTP on TF Serving REST,
tensorflow-serving-api gRPC, tritonclient.http, tritonclient.grpc) running across every swap
with zero failures and versions that never go backwards for any client."""

import os
import threading

import grpc
import httpx
import numpy as np
import pytest

from conftest import affine_version, wait_for, wait_state
from hotserve.examples import make_affine_savedmodel
from hotserve.repository.publish import publish

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")
tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402


def _rest(server, x):
    with httpx.Client(timeout=30) as c:
        while True:
            r = c.post(server.url + "/v1/models/m:predict", json={"instances": x.tolist()})
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text}")
            yield int(r.headers["x-model-version"]), np.array(r.json()["predictions"], np.float32)


def _tfs(server, x):
    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "m"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    try:
        while True:
            resp = stub.Predict(req, timeout=30)
            yield resp.model_spec.version.value, tf.make_ndarray(resp.outputs["y"])
    finally:
        channel.close()


def _triton_http(server, x):
    c = tritonhttp.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30)
    inp = tritonhttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        while True:
            res = c.infer("m", [inp])
            yield int(res.get_response()["model_version"]), res.as_numpy("y")
    finally:
        c.close()


def _triton_grpc(server, x):
    c = tritongrpc.InferenceServerClient(server.grpc_target)
    inp = tritongrpc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        while True:
            res = c.infer("m", [inp])
            yield int(res.get_response().model_version), res.as_numpy("y")
    finally:
        c.close()


FAMILIES = {"rest": _rest, "tensorflow-serving-api": _tfs, "tritonclient.http": _triton_http, "tritonclient.grpc": _triton_grpc}


def test_all_client_families_across_onnx_and_savedmodel_swaps(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)  # ONNX
    server = start_server(base)
    errors: list[str] = []
    seen: dict[str, list[int]] = {name: [] for name in FAMILIES}
    stop = threading.Event()

    def run(name, family, i):
        x = np.full((2, 4), float(i), np.float32)
        last = 0
        gen = family(server, x)
        try:
            for _ in range(200_000):
                if stop.is_set():
                    break
                try:
                    v, y = next(gen)
                except Exception as exc:  # every failure is recorded and fails the test
                    errors.append(f"{name}: {exc}")
                    gen = family(server, x)
                    continue
                if not np.allclose(y, x + v):
                    errors.append(f"{name}: version {v} answered {y.tolist()}, expected x + {v}")
                if v < last:
                    errors.append(f"{name}: version went backwards {last} -> {v}")
                last = v
                seen[name].append(v)
        finally:
            gen.close()

    threads = [threading.Thread(target=run, args=(n, f, i)) for i, (n, f) in enumerate(FAMILIES.items())]
    for t in threads:
        t.start()
    savedmodel_versions = {2, 4}
    platforms: dict[int, str] = {}
    try:
        for v in range(2, 6):
            if v in savedmodel_versions:
                src = make_affine_savedmodel(os.path.join(build, f"sm{v}"), float(v))
                publish(src, base, v)
            else:
                affine_version(base, v, build)
            wait_state(server, v, "AVAILABLE", timeout=60)
            platforms[v] = httpx.get(f"{server.url}/v2/models/m/versions/{v}").json()["platform"]
            wait_for(lambda: all(v in s for s in seen.values()), 30, f"every client family to see version {v}")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == [], errors[:5]
    for name, versions in seen.items():
        assert set(range(2, 6)) <= set(versions), (name, sorted(set(versions)))
    assert platforms == {2: "tensorflow_savedmodel", 3: "onnxruntime_onnx", 4: "tensorflow_savedmodel", 5: "onnxruntime_onnx"}
