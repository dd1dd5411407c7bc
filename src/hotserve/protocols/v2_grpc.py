"""KServe V2 gRPC messages <-> numpy: ModelInferRequest inputs (raw or typed contents) and
ModelInferResponse outputs (raw contents, as Triton answers)."""

from __future__ import annotations

import math

import numpy as np

from hotserve import dtypes
from hotserve.errors import InvalidArgument
from hotserve.protocols.limits import check_shape
from hotserve.protocols.v2 import datatype_of, numpy_to_raw, raw_to_numpy
from hotserve.protos.inference import grpc_service_pb2 as pb

# Which InferTensorContents field carries each datatype in typed (non-raw) requests.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def decode_infer(req: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs; send one per input, in order")
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(req.inputs):
        where = f"input {t.name!r}"
        if t.name in inputs:
            raise InvalidArgument(f"{where} appears twice")
        shape = check_shape(where, tuple(t.shape))
        if raw:
            inputs[t.name] = raw_to_numpy(raw[i], t.datatype, shape, where)
            continue
        field = _CONTENTS_FIELD.get(t.datatype)
        if field is None:
            raise InvalidArgument(f"{where}: datatype {t.datatype!r} has no typed contents field; send it in raw_input_contents")
        values = getattr(t.contents, field)
        n = math.prod(shape)  # Python ints: np.prod would wrap around for huge shapes
        if len(values) != n:
            raise InvalidArgument(f"{where}: contents.{field} has {len(values)} values but shape {list(shape)} needs {n}")
        if t.datatype == "BYTES":
            arr = np.empty(n, dtype=object)
            arr[:] = list(values)
        else:
            arr = np.asarray(values, dtype=dtypes.BY_V2_NAME[t.datatype].numpy)
        inputs[t.name] = arr.reshape(shape)
    return inputs


def encode_infer(model: str, version: str, request_id: str, outputs: dict[str, np.ndarray],
                 wanted: list[str], revision: int | None = None) -> pb.ModelInferResponse:
    if wanted:
        unknown = [w for w in wanted if w not in outputs]
        if unknown:
            raise InvalidArgument(f"unknown output(s) {unknown}; the model has outputs {list(outputs)}")
        outputs = {w: outputs[w] for w in wanted}
    resp = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    if revision is not None:
        resp.parameters["revision"].int64_param = revision
    for name, arr in outputs.items():
        out = resp.outputs.add(name=name, datatype=datatype_of(arr))
        out.shape.extend(arr.shape)
        resp.raw_output_contents.append(numpy_to_raw(arr))
    return resp
