"""TF Serving gRPC messages <-> the internal request: PredictRequest, GetModelMetadata,
GetModelStatus, and the tf.Example inputs of Classify / Regress / MultiInference."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from hotserve.core.states import VersionStatus
from hotserve.errors import InvalidArgument
from hotserve.protocols.limits import TensorBudget
from hotserve.protos import tensors
from hotserve.protos.tensorflow.core.protobuf import meta_graph_pb2
from hotserve.protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)
from hotserve.runtimes.base import DEFAULT_SIGNATURE, Signature, TensorSpec


def requested_version(spec) -> tuple[int | None, str | None]:
    """(version, label) from a ModelSpec; both None means the default version."""
    which = spec.WhichOneof("version_choice")
    if which == "version":
        return spec.version.value, None
    if which == "version_label":
        return None, spec.version_label
    return None, None


def decode_predict(req: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    inputs = {}
    budget = TensorBudget(req.ByteSize())
    for name, tp in req.inputs.items():
        try:
            inputs[name] = tensors.to_numpy(tp, budget)
        except ValueError as exc:
            raise InvalidArgument(f"input {name!r}: {exc}") from None
    return inputs


def encode_predict(model: str, version: int, signature_name: str, outputs: dict[str, np.ndarray],
                   output_filter: Iterable[str]) -> predict_pb2.PredictResponse:
    wanted = list(output_filter)
    if wanted:
        unknown = [o for o in wanted if o not in outputs]
        if unknown:
            raise InvalidArgument(f"output_filter names {unknown}, which the signature does not have; outputs: {list(outputs)}")
        outputs = {o: outputs[o] for o in wanted}
    resp = predict_pb2.PredictResponse()
    fill_spec(resp.model_spec, model, version, signature_name)
    for name, arr in outputs.items():
        tensors.from_numpy(arr, out=resp.outputs[name])
    return resp


def fill_spec(spec, model: str, version: int, signature_name: str) -> None:
    spec.name = model
    spec.version.value = version
    spec.signature_name = signature_name or DEFAULT_SIGNATURE


def _tensor_info(info: meta_graph_pb2.TensorInfo, spec: TensorSpec, tensor_name: str) -> None:
    info.name = tensor_name
    info.dtype = spec.dtype.tf_enum
    if spec.shape is None:
        info.tensor_shape.unknown_rank = True
    else:
        for d in spec.shape:
            info.tensor_shape.dim.add().size = d


def signature_def(sig: Signature) -> meta_graph_pb2.SignatureDef:
    sd = meta_graph_pb2.SignatureDef(method_name=sig.method_name)
    for key, spec in sig.inputs.items():
        _tensor_info(sd.inputs[key], spec, sig.input_tensor_names.get(key, key))
    for key, spec in sig.outputs.items():
        _tensor_info(sd.outputs[key], spec, sig.output_tensor_names.get(key, key))
    return sd


def encode_metadata(model: str, version: int, signatures: dict[str, Signature],
                    fields: Iterable[str]) -> get_model_metadata_pb2.GetModelMetadataResponse:
    fields = list(fields)
    if not fields:
        raise InvalidArgument("GetModelMetadataRequest must name at least one metadata_field; supported: signature_def")
    unsupported = [f for f in fields if f != "signature_def"]
    if unsupported:
        raise InvalidArgument(f"metadata_field {unsupported} not supported; supported: signature_def")
    resp = get_model_metadata_pb2.GetModelMetadataResponse()
    resp.model_spec.name = model
    resp.model_spec.version.value = version
    sdm = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in signatures.items():
        sdm.signature_def[name].CopyFrom(signature_def(sig))
    resp.metadata["signature_def"].Pack(sdm)
    return resp


_STATE = get_model_status_pb2.ModelVersionStatus.State


def encode_status(statuses: Iterable[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    from hotserve.protos.tensorflow.core.protobuf import error_codes_pb2

    resp = get_model_status_pb2.GetModelStatusResponse()
    for st in statuses:
        mvs = resp.model_version_status.add()
        mvs.version = st.version
        mvs.state = _STATE.Value(st.state.value)
        mvs.status.error_code = error_codes_pb2.Code.Value(st.error_code.value)
        mvs.status.error_message = st.error_message
    return resp
