"""gRPC with clients nobody here wrote: tensorflow-serving-api's stubs with tf.make_tensor_proto /
tf.make_ndarray, tritonclient.grpc, and the standard grpc health client; hot swaps under each."""

import grpc
import numpy as np
import pytest

from clients import FamilyClients, tfs_grpc, triton_grpc
from conftest import affine_version, wait_for, wait_state
from hotserve.examples import make_two_io
from hotserve.repository.publish import publish

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")
tritongrpc = pytest.importorskip("tritonclient.grpc")
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


def _predict_request(x, model="m", version=None, label=None):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return req




def test_tf_serving_predict_metadata_status(grpc_served):
    server, channel, _, _ = grpc_served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    resp = stub.Predict(_predict_request(x), timeout=10)
    assert resp.model_spec.name == "m" and resp.model_spec.version.value == 1
    assert resp.model_spec.signature_name == "serving_default"
    np.testing.assert_array_equal(tf.make_ndarray(resp.outputs["y"]), x + 1)
    assert stub.Predict(_predict_request(x, version=1), timeout=10).model_spec.version.value == 1

    # Typed fields instead of tensor_content, as older clients send them.
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "m"
    req.inputs["x"].dtype = tf.float32.as_datatype_enum
    req.inputs["x"].tensor_shape.dim.add().size = 1
    req.inputs["x"].tensor_shape.dim.add().size = 4
    req.inputs["x"].float_val.extend([1, 2, 3, 4])
    np.testing.assert_array_equal(tf.make_ndarray(stub.Predict(req, timeout=10).outputs["y"]), [[2, 3, 4, 5]])

    mreq = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    mreq.model_spec.name = "m"
    meta = stub.GetModelMetadata(mreq, timeout=10)
    assert meta.model_spec.version.value == 1
    sdm = get_model_metadata_pb2.SignatureDefMap()
    assert meta.metadata["signature_def"].Unpack(sdm)
    sig = sdm.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert sig.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in sig.inputs["x"].tensor_shape.dim] == [-1, 4]

    ms = model_service_pb2_grpc.ModelServiceStub(channel)
    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = "m"
    st = ms.GetModelStatus(sreq, timeout=10)
    [v] = st.model_version_status
    assert v.version == 1 and v.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert v.status.error_code == 0


def _code(fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def test_tf_serving_error_statuses(grpc_served):
    server, channel, _, _ = grpc_served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = np.zeros((1, 4), np.float32)
    code, msg = _code(lambda: stub.Predict(_predict_request(x, model="nope"), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in msg
    code, msg = _code(lambda: stub.Predict(_predict_request(x, version=9), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND
    code, msg = _code(lambda: stub.Predict(_predict_request(np.zeros((1, 3), np.float32)), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expected shape [-1, 4], got [1, 3]" in msg
    code, msg = _code(lambda: stub.Predict(_predict_request(np.zeros((1, 4), np.int32)), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "DT_INT32" in msg
    bad = _predict_request(x)
    bad.inputs["x"].tensor_content = b"\x00" * 3
    code, msg = _code(lambda: stub.Predict(bad, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    req = _predict_request(x)
    req.output_filter.append("nope")
    code, msg = _code(lambda: stub.Predict(req, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "output_filter" in msg
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = "m"
    creq.input.example_list.examples.add()
    code, msg = _code(lambda: stub.Classify(creq, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "classify needs a signature" in msg
    ms = model_service_pb2_grpc.ModelServiceStub(channel)
    code, msg = _code(lambda: ms.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "--admin_token" in msg  # management API off without a token
    # The server still serves after every error.
    assert stub.Predict(_predict_request(x), timeout=10).model_spec.version.value == 1


def test_grpc_health(grpc_served):
    server, channel, _, _ = grpc_served
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="m"), timeout=10).status == health_pb2.HealthCheckResponse.SERVING


def test_large_message(grpc_served):
    server, channel, _, _ = grpc_served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    big = grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", -1),
                                                               ("grpc.max_receive_message_length", -1)])
    x = np.ones((400_000, 4), np.float32)  # 6.4 MB each way, over gRPC's 4 MB default
    resp = prediction_service_pb2_grpc.PredictionServiceStub(big).Predict(_predict_request(x), timeout=60)
    assert tf.make_ndarray(resp.outputs["y"]).shape == (400_000, 4)
    big.close()
    assert stub is not None


def test_tritonclient_grpc(repo, start_server, tmp_path):
    base, _ = repo
    publish(make_two_io(str(tmp_path / "two" / "model.onnx"), offset=1.0), base, 1)
    server = start_server(base, "--admin_token", "s3cret")
    c = tritongrpc.InferenceServerClient(server.grpc_target)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("m")
    meta = c.get_model_metadata("m", as_json=True)
    assert meta["versions"] == ["1"] and [i["name"] for i in meta["inputs"]] == ["a", "b"]
    assert c.get_server_metadata(as_json=True)["name"] == "hotserve"
    a = tritongrpc.InferInput("a", [2, 3], "FP32")
    a.set_data_from_numpy(np.ones((2, 3), np.float32))
    b = tritongrpc.InferInput("b", [2], "INT64")
    b.set_data_from_numpy(np.array([5, -7], np.int64))
    res = c.infer("m", [a, b])
    np.testing.assert_array_equal(res.as_numpy("sum"), np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(res.as_numpy("b_out"), [10, -14])
    assert res.get_response().model_version == "1"
    res = c.infer("m", [a, b], outputs=[tritongrpc.InferRequestedOutput("b_out")])
    assert res.as_numpy("sum") is None
    with pytest.raises(Exception, match="unexpected input"):
        bad = tritongrpc.InferInput("zzz", [2], "INT64")
        bad.set_data_from_numpy(np.array([1, 2], np.int64))
        c.infer("m", [a, bad])
    index = c.get_model_repository_index(as_json=True)
    assert index["models"] == [{"name": "m", "version": "1", "state": "READY"}]
    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        c.unload_model("m")  # state changes need the admin token
    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        c.unload_model("m", headers={"authorization": "Bearer wrong"})
    assert c.is_model_ready("m")
    auth = {"authorization": "Bearer s3cret"}
    c.unload_model("m", headers=auth)
    assert not c.is_model_ready("m")
    c.load_model("m", headers=auth)
    assert c.is_model_ready("m")
    c.close()


def test_hot_swaps_under_grpc_clients(grpc_served):
    server, channel, base, build = grpc_served
    families = [("tf 0", tfs_grpc), ("tf 1", tfs_grpc), ("triton 0", triton_grpc), ("triton 1", triton_grpc)]
    with FamilyClients(server, families) as clients:
        wait_for(lambda: clients.count(1) >= 10, 20, "version 1 to serve the clients first")
        for v in range(2, 7):
            affine_version(base, v, build)
            wait_state(server, v, "AVAILABLE")
            wait_for(lambda: clients.count(v) >= 10, 20, f"version {v} to serve")
    assert clients.errors == [], clients.errors[:5]
    assert set(range(1, 7)) <= clients.versions()
