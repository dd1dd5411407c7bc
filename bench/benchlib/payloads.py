"""Request bodies for every API the bench speaks, and a one-request check per server/API/batch
that the answer is a correct prediction (so no table row ever measures error responses)."""

from __future__ import annotations

import http.client
import json
import struct
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np

MODEL = "mlp"
IN_DIM, OUT_DIM = 784, 10


@dataclass(frozen=True)
class Api:
    key: str
    label: str
    proto: str  # "http" or "grpc"
    path: str


APIS: dict[str, Api] = {a.key: a for a in [
    Api("tfs-json", "REST TFS JSON", "http", f"/v1/models/{MODEL}:predict"),
    Api("v2-json", "REST V2 JSON", "http", f"/v2/models/{MODEL}/infer"),
    Api("v2-bin", "REST V2 binary", "http", f"/v2/models/{MODEL}/infer"),
    Api("grpc-v2", "gRPC V2 ModelInfer", "grpc", "/inference.GRPCInferenceService/ModelInfer"),
    Api("grpc-tfs", "gRPC TFS Predict", "grpc", "/tensorflow.serving.PredictionService/Predict"),
]}


@dataclass
class Payload:
    api: Api
    batch: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    x: np.ndarray | None = None


def make_input(batch: int, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """(float64 rounded to 4 decimals for JSON, the same values as float32 for binary)."""
    x64 = np.round(np.random.default_rng(seed).random((batch, IN_DIM)), 4)
    return x64, x64.astype(np.float32)


def _compact(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def grpc_frame(msg: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def make_payload(api_key: str, batch: int) -> Payload:
    api = APIS[api_key]
    x64, x32 = make_input(batch)
    if api_key == "tfs-json":
        return Payload(api, batch, _compact({"instances": x64.tolist()}), "application/json", x=x32)
    if api_key == "v2-json":
        doc = {"inputs": [{"name": "x", "shape": [batch, IN_DIM], "datatype": "FP32", "data": x64.ravel().tolist()}]}
        return Payload(api, batch, _compact(doc), "application/json", x=x32)
    if api_key == "v2-bin":
        raw = x32.astype("<f4").tobytes()
        header = _compact({
            "inputs": [{"name": "x", "shape": [batch, IN_DIM], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        })
        return Payload(api, batch, header + raw, "application/octet-stream",
                       {"Inference-Header-Content-Length": str(len(header))}, x=x32)
    if api_key == "grpc-v2":
        from hotserve.protos.inference import grpc_service_pb2 as pb

        req = pb.ModelInferRequest(model_name=MODEL)
        t = req.inputs.add()
        t.name, t.datatype = "x", "FP32"
        t.shape.extend([batch, IN_DIM])
        req.raw_input_contents.append(x32.astype("<f4").tobytes())
        return Payload(api, batch, req.SerializeToString(), "application/grpc", x=x32)
    if api_key == "grpc-tfs":
        from hotserve.protos.tensorflow.core.framework import types_pb2
        from hotserve.protos.tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        req.model_spec.name = MODEL
        t = req.inputs["x"]
        t.dtype = types_pb2.DT_FLOAT
        t.tensor_shape.dim.add().size = batch
        t.tensor_shape.dim.add().size = IN_DIM
        t.tensor_content = x32.astype("<f4").tobytes()
        return Payload(api, batch, req.SerializeToString(), "application/grpc", x=x32)
    raise KeyError(api_key)


def reference_output(model_path: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


class CheckError(RuntimeError):
    pass


def _decode_http(api_key: str, headers: dict[str, str], body: bytes) -> np.ndarray:
    if api_key == "tfs-json":
        return np.asarray(json.loads(body)["predictions"], dtype=np.float32)
    hlen = headers.get("inference-header-content-length")
    doc = json.loads(body[: int(hlen)] if hlen else body)
    out = doc["outputs"][0]
    shape = out["shape"]
    if "data" in out:
        return np.asarray(out["data"], dtype=np.float32).reshape(shape)
    raw = body[int(hlen): int(hlen) + out["parameters"]["binary_data_size"]]
    return np.frombuffer(raw, dtype="<f4").reshape(shape)


def _decode_grpc(api_key: str, msg: bytes) -> np.ndarray:
    if api_key == "grpc-v2":
        from hotserve.protos.inference import grpc_service_pb2 as pb

        resp = pb.ModelInferResponse.FromString(msg)
        out = resp.outputs[0]
        if resp.raw_output_contents:
            return np.frombuffer(resp.raw_output_contents[0], dtype="<f4").reshape(list(out.shape))
        return np.asarray(out.contents.fp32_contents, dtype=np.float32).reshape(list(out.shape))
    from hotserve.protos.tensorflow_serving.apis import predict_pb2

    t = predict_pb2.PredictResponse.FromString(msg).outputs["y"]
    shape = [d.size for d in t.tensor_shape.dim]
    if t.tensor_content:
        return np.frombuffer(t.tensor_content, dtype="<f4").reshape(shape)
    return np.asarray(t.float_val, dtype=np.float32).reshape(shape)


def check(payload: Payload, url: str, grpc_target: str, ref: np.ndarray) -> dict:
    """Send the payload once; raise CheckError unless the answer matches the reference.
    Returns facts about the answer (for gRPC: the response's size on the wire, which the
    h2load runner uses to count successful calls)."""
    api = payload.api
    info: dict = {}
    if api.proto == "http":
        u = urlparse(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            conn.request("POST", api.path, payload.body, {"Content-Type": payload.content_type, **payload.headers})
            resp = conn.getresponse()
            body = resp.read()
            headers = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        if resp.status != 200:
            raise CheckError(f"{api.label} batch {payload.batch}: HTTP {resp.status}: {body[:300]!r}")
        y = _decode_http(api.key, headers, body)
        info["version"] = headers.get("x-model-version")
    else:
        import grpc

        with grpc.insecure_channel(grpc_target, options=[("grpc.max_receive_message_length", 2**31 - 1),
                                                         ("grpc.max_send_message_length", 2**31 - 1)]) as ch:
            call = ch.unary_unary(api.path, request_serializer=None, response_deserializer=None)
            try:
                msg = call(payload.body, timeout=30)
            except grpc.RpcError as exc:
                raise CheckError(f"{api.label} batch {payload.batch}: {exc.code()}: {exc.details()}") from None
        y = _decode_grpc(api.key, msg)
        info["response_frame_bytes"] = len(grpc_frame(msg))
    if y.shape != ref.shape or not np.allclose(y, ref, rtol=1e-3, atol=1e-4):
        raise CheckError(f"{api.label} batch {payload.batch}: prediction differs from onnxruntime's "
                         f"(shape {y.shape} vs {ref.shape}, max abs diff {np.max(np.abs(y - ref)) if y.shape == ref.shape else 'n/a'})")
    return info
