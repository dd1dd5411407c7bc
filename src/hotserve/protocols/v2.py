"""KServe V2 / Open Inference Protocol tensors: JSON `data`, Triton's binary tensor extension,
and the raw little-endian layout shared with gRPC `raw_input_contents`.

BYTES elements travel as a 4-byte little-endian length followed by the bytes, in both the
binary extension and gRPC raw contents.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from hotserve import dtypes
from hotserve.errors import InvalidArgument, clip
from hotserve.protocols.limits import check_shape
from hotserve.protocols import json_numbers
from hotserve.protocols.json_body import parse_object
from hotserve.runtimes.base import Signature

# The KServe V2 extensions hotserve implements (server metadata lists them).
EXTENSIONS = ["binary_tensor_data", "model_repository"]

# Triton's binary tensor extension: the JSON part's length, in requests and responses.
BINARY_HEADER = b"inference-header-content-length"

_FIXED_TYPES = {name: d.numpy for name, d in dtypes.BY_V2_NAME.items() if name != "BYTES"}


def datatype_of(arr: np.ndarray) -> str:
    return dtypes.from_numpy(arr.dtype).v2_name


def _shape(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise InvalidArgument(f"{where}: 'shape' must be a list of non-negative integers, got {clip(repr(raw))}")
    return check_shape(where, tuple(raw))


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def raw_to_numpy(buf: bytes | memoryview, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Decode one tensor's raw bytes; fixed-size types become a zero-copy view of `buf`."""
    n = _count(shape)
    if datatype == "BYTES":
        if 4 * n > len(buf):  # checked before allocating: each element needs its 4-byte length
            raise InvalidArgument(f"{where}: {len(buf)} bytes of BYTES data cannot hold the {n} elements shape "
                                  f"{list(shape)} declares (each needs at least a 4-byte length prefix)")
        out = np.empty(n, dtype=object)
        mv = memoryview(buf)
        pos = 0
        for i in range(n):
            if pos + 4 > len(mv):
                raise InvalidArgument(f"{where}: BYTES data ends after {i} of {n} elements (each needs a 4-byte length prefix)")
            (length,) = struct.unpack_from("<I", mv, pos)
            pos += 4
            if pos + length > len(mv):
                raise InvalidArgument(f"{where}: BYTES element {i} claims {length} bytes but only {len(mv) - pos} remain")
            out[i] = bytes(mv[pos:pos + length])
            pos += length
        if pos != len(mv):
            raise InvalidArgument(f"{where}: {len(mv) - pos} bytes left over after {n} BYTES elements")
        return out.reshape(shape)
    np_type = _FIXED_TYPES.get(datatype)
    if np_type is None:
        raise InvalidArgument(f"{where}: unsupported datatype {datatype!r}; expected one of {sorted(dtypes.BY_V2_NAME)}")
    want = n * np_type.itemsize
    if len(buf) != want:
        raise InvalidArgument(f"{where}: {len(buf)} bytes of data, but shape {list(shape)} of {datatype} needs {want}")
    return np.frombuffer(buf, dtype=np_type.newbyteorder("<")).reshape(shape)


def numpy_to_raw(arr: np.ndarray) -> bytes:
    if arr.dtype == object or arr.dtype.kind in "SU":
        parts = []
        for v in arr.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def json_to_numpy(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1) if isinstance(data, list) else np.array([data], dtype=object)
        out = np.empty(flat.size, dtype=object)
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise InvalidArgument(f"{where}: BYTES data must be strings, got {type(v).__name__}")
            out[i] = v.encode()
        arr = out
    else:
        np_type = _FIXED_TYPES.get(datatype)
        if np_type is None:
            raise InvalidArgument(f"{where}: unsupported datatype {datatype!r}; expected one of {sorted(dtypes.BY_V2_NAME)}")
        try:
            arr = np.asarray(data, dtype=np_type)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidArgument(f"{where}: 'data' does not hold {datatype} values: {exc}") from None
    if arr.size != _count(shape):
        raise InvalidArgument(f"{where}: 'data' has {arr.size} elements but shape {list(shape)} needs {_count(shape)}")
    return arr.reshape(shape)


class InferRequest:
    """A decoded V2 infer request."""

    __slots__ = ("id", "inputs", "outputs", "binary_outputs", "parameters")

    def __init__(self) -> None:
        self.id: str | None = None
        self.inputs: dict[str, np.ndarray] = {}
        self.outputs: list[str] | None = None  # None: every output
        self.binary_outputs: set[str] = set()
        self.parameters: dict = {}


def decode_infer(body: bytes, header_length: int | None) -> InferRequest:
    """Parse a V2 JSON request, with the binary tensors after the JSON when header_length is given."""
    if header_length is None:
        json_part, tail = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidArgument(f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes")
        json_part, tail = body[:header_length], memoryview(body)[header_length:]
    doc = json_numbers.parse_infer(body) if header_length is None else None
    if doc is None:
        doc = parse_object(json_part, "a JSON object with an 'inputs' list")
    req = InferRequest()
    req.id = doc.get("id")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument("'parameters' must be an object")
    req.parameters = params
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("'inputs' must be a non-empty list of {name, shape, datatype, data} objects")
    offset = 0
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise InvalidArgument(f"inputs[{i}] must be an object with name, shape, datatype and data")
        name = spec.get("name")
        if not isinstance(name, str):
            raise InvalidArgument(f"inputs[{i}]: 'name' must be a string")
        where = f"input {name!r}"
        if name in req.inputs:
            raise InvalidArgument(f"{where} appears twice")
        datatype = spec.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidArgument(f"{where}: 'datatype' must be a string such as \"FP32\"")
        shape = _shape(spec.get("shape"), where)
        iparams = spec.get("parameters") or {}
        size = iparams.get("binary_data_size") if isinstance(iparams, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(tail):
                raise InvalidArgument(f"{where}: binary_data_size {size!r} does not fit the {len(tail) - offset} binary bytes left")
            req.inputs[name] = raw_to_numpy(tail[offset:offset + size], datatype, shape, where)
            offset += size
        else:
            if "data" not in spec:
                raise InvalidArgument(f"{where}: needs 'data' or a 'binary_data_size' parameter")
            req.inputs[name] = json_to_numpy(spec["data"], datatype, shape, where)
    if offset != len(tail):
        raise InvalidArgument(f"{len(tail) - offset} binary bytes after the JSON header are not claimed by any input")
    all_binary = bool(params.get("binary_data_output", False))
    outs = doc.get("outputs")
    if outs is not None:
        if not isinstance(outs, list):
            raise InvalidArgument("'outputs' must be a list of {name, parameters} objects")
        req.outputs = []
        for o in outs:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidArgument("each requested output must be an object with a 'name'")
            req.outputs.append(o["name"])
            op = o.get("parameters") or {}
            if op.get("binary_data", all_binary):
                req.binary_outputs.add(o["name"])
    elif all_binary:
        req.binary_outputs = {"*"}
    return req


def select_outputs(outputs: dict[str, np.ndarray], wanted: list[str] | None, sig: Signature) -> dict[str, np.ndarray]:
    if wanted is None:
        return outputs
    unknown = [w for w in wanted if w not in outputs]
    if unknown:
        raise InvalidArgument(f"unknown output(s) {unknown}; the model has outputs {list(sig.outputs)}")
    return {w: outputs[w] for w in wanted}


def encode_infer(model: str, version: str, req: InferRequest, outputs: dict[str, np.ndarray],
                 revision: int | None = None) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header length."""
    out_docs = []
    tails = []
    all_binary = "*" in req.binary_outputs
    for name, arr in outputs.items():
        doc: dict[str, Any] = {"name": name, "datatype": datatype_of(arr), "shape": list(arr.shape)}
        if all_binary or name in req.binary_outputs:
            raw = numpy_to_raw(arr)
            doc["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        elif arr.dtype == object:
            doc["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
        else:
            doc["data"] = arr.reshape(-1)
        out_docs.append(doc)
    resp: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": out_docs}
    if req.id is not None:
        resp["id"] = req.id
    if revision is not None:
        resp["parameters"] = {"revision": revision}  # the parameter revision beside model_version
    header = orjson.dumps(resp, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)
    if not tails:
        return header, None
    return header + b"".join(tails), len(header)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot encode {type(obj).__name__}")


PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorflow": "tensorflow_savedmodel", "python": "python"}


def tensor_metadata(sig: Signature, side: str) -> list[dict]:
    specs = sig.inputs if side == "inputs" else sig.outputs
    return [
        {"name": key, "datatype": s.dtype.v2_name, "shape": list(s.shape) if s.shape is not None else [-1]}
        for key, s in specs.items()
    ]


_INDEX_STATE = {"AVAILABLE": "READY", "LOADING": "LOADING", "UNLOADING": "UNLOADING"}


def version_field(text: str) -> tuple[int | None, str | None]:
    """(version, label) from V2's version field, which holds a number, a label, or nothing."""
    if not text:
        return None, None
    return (int(text), None) if text.isdigit() else (None, text)


def repository_index(models: dict, ready_only: bool = False) -> list[dict]:
    """Triton's repository index rows: one per known version, READY / LOADING / UNLOADING /
    UNAVAILABLE with the reason; a model with no version yet gets one UNAVAILABLE row."""
    rows = []
    for name, mm in models.items():
        statuses = mm.statuses()
        if not statuses and not ready_only:
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "no version loaded"})
        for st in statuses:
            state = _INDEX_STATE.get(st.state.value, "UNAVAILABLE")
            if ready_only and state != "READY":
                continue
            rows.append({"name": name, "version": str(st.version), "state": state, "reason": st.error_message})
    return rows
