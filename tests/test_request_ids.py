"""Request ids on all four APIs: X-Request-Id (REST, echoed), V2's body id (REST and gRPC,
echoed in the body), gRPC x-request-id metadata (echoed in trailing metadata); made by the
server when prediction logging is on and none came; the id names the logged prediction."""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np
import pytest

from conftest import affine_version
from hotserve.protos import tensors
from hotserve.protos.inference import grpc_service_pb2 as v2pb
from hotserve.protos.tensorflow_serving.apis import predict_pb2

X = [[1.0, 2.0, 3.0, 4.0]]


def _tfs_predict(channel, rid: str | None):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "m"
    req.inputs["x"].CopyFrom(tensors.from_numpy(np.asarray(X, np.float32)))
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                               request_serializer=predict_pb2.PredictRequest.SerializeToString,
                               response_deserializer=predict_pb2.PredictResponse.FromString)
    _, info = call.with_call(req, metadata=[("x-request-id", rid)] if rid else None, timeout=10)
    return dict(info.trailing_metadata())


def _v2_infer(channel, body_id: str, rid: str | None):
    req = v2pb.ModelInferRequest(model_name="m", id=body_id)
    t = req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    t.contents.fp32_contents.extend(X[0])
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=v2pb.ModelInferRequest.SerializeToString,
                               response_deserializer=v2pb.ModelInferResponse.FromString)
    resp, info = call.with_call(req, metadata=[("x-request-id", rid)] if rid else None, timeout=10)
    return resp.id, dict(info.trailing_metadata())


def _v2_rest(client, url, body_id=None, header=None):
    doc = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X[0]}]}
    if body_id is not None:
        doc["id"] = body_id
    r = client.post(url + "/v2/models/m/infer", json=doc, headers={"X-Request-Id": header} if header else None)
    assert r.status_code == 200, r.text
    return r.json().get("id"), r.headers.get("x-request-id")


@pytest.fixture
def logged(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--learning_dir", str(tmp_path / "learn"), "--prediction_log_sampling_rate", "1")
    channel = grpc.insecure_channel(server.grpc_target)
    with httpx.Client(timeout=10) as client:
        yield server, client, channel
    channel.close()


def test_ids_echoed_and_made_on_all_four_apis(logged):
    server, client, channel = logged
    url = server.url
    # REST TF Serving: the header is echoed; none given -> one is made (logging is on).
    r = client.post(url + "/v1/models/m:predict", json={"instances": X}, headers={"X-Request-Id": "rest-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "rest-1"
    made_rest = client.post(url + "/v1/models/m:predict", json={"instances": X}).headers["x-request-id"]
    assert len(made_rest) == 32
    # An error answer names the id too.
    bad = client.post(url + "/v1/models/m:predict", json={"instances": [[1.0]]}, headers={"X-Request-Id": "rest-bad"})
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "rest-bad"
    # REST V2: the body's id is echoed in the body (and named in the header); none -> made, in both.
    assert _v2_rest(client, url, body_id="v2-rest") == ("v2-rest", "v2-rest")
    made_body, made_header = _v2_rest(client, url)
    assert made_body == made_header and len(made_body) == 32
    # gRPC TF Serving: x-request-id metadata is echoed in the trailing metadata; none -> made.
    assert _tfs_predict(channel, "grpc-tfs")["x-request-id"] == "grpc-tfs"
    assert len(_tfs_predict(channel, None)["x-request-id"]) == 32
    # gRPC V2: body id echoed in the body and the metadata; metadata id without a body id -> body carries it.
    assert _v2_infer(channel, "v2-grpc", None) == ("v2-grpc", {"x-model-version": "1", "x-model-revision": "0", "x-request-id": "v2-grpc"})
    body, meta = _v2_infer(channel, "", "v2-meta")
    assert body == "v2-meta" and meta["x-request-id"] == "v2-meta"

    # Every id names its logged prediction: feedback joins all of them.
    ids = ["rest-1", made_rest, "v2-rest", made_body, "grpc-tfs", "v2-grpc", "v2-meta"]
    r = client.post(url + "/v1/models/m:feedback",
                    json={"feedback": [{"request_id": i, "label": [0, 0, 0, 0]} for i in ids + ["rest-bad"]]})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(ids) and r.json()["unknown_request_ids"] == ["rest-bad"]  # errors are not logged


def test_no_id_made_when_logging_is_off(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--learning_dir", str(tmp_path / "learn"))  # store on, logging off for m
    with httpx.Client(timeout=10) as client:
        r = client.post(server.url + "/v1/models/m:predict", json={"instances": X})
        assert r.status_code == 200 and "x-request-id" not in r.headers
        r = client.post(server.url + "/v1/models/m:predict", json={"instances": X}, headers={"X-Request-Id": "kept"})
        assert r.headers["x-request-id"] == "kept"  # a given id is still echoed
        r = client.post(server.url + "/v1/models/m:feedback", json={"feedback": [{"request_id": "kept", "label": [1, 1, 1, 1]}]})
        assert r.json() == {"accepted": 0, "unknown_request_ids": ["kept"], "watermark": None}
        status = json.loads(server.get("/v1/models/m/learning")[1])
        assert status["prediction_log"]["sampling_rate"] == 0.0 and status["prediction_log"]["logged_total"] == 0
