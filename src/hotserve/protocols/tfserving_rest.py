"""TensorFlow Serving's REST JSON: predict (row and columnar), status and metadata bodies.

Shapes follow TF Serving's REST API page: `instances` -> `predictions`, `inputs` -> `outputs`,
`{"b64": ...}` for binary strings, metadata as the JSON form of GetModelMetadataResponse.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Iterable

import numpy as np
import orjson

from hotserve import dtypes
from hotserve.core.states import VersionStatus
from hotserve.errors import InvalidArgument
from hotserve.protocols import json_numbers
from hotserve.protocols.json_body import parse_object
from hotserve.runtimes.base import Signature, TensorSpec

_DUMP_OPTS = orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc, default=_default, option=_DUMP_OPTS)


def _string_tree(value: Any, b64: bool) -> Any:
    if isinstance(value, list):
        return [_string_tree(v, b64) for v in value]
    if isinstance(value, bytes):
        if not b64:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                pass  # not text: base64 keeps the JSON valid and the bytes intact
        return {"b64": base64.b64encode(value).decode()}
    return value


def _json_ready(name: str, arr: np.ndarray) -> Any:
    """TF Serving's rule for DT_STRING outputs: base64 objects when the output name ends in
    '_bytes', text otherwise. Numeric arrays pass through for orjson to write natively."""
    if arr.dtype != object:
        return arr
    return _string_tree(arr.tolist(), name.endswith("_bytes"))


# -- request --------------------------------------------------------------------------------
def parse_body(body: bytes) -> dict:
    return parse_object(body, "a JSON object with 'instances' or 'inputs'")


_PREDICT_KEYS = ("instances", "inputs")


def parse_predict_body(body: bytes) -> dict:
    """A predict body: straight to numpy when it is one array of numbers (json_numbers.py),
    else parse_body."""
    return json_numbers.parse(body, _PREDICT_KEYS) or parse_body(body)


def signature_name(doc: dict) -> str | None:
    name = doc.get("signature_name")
    if name is not None and not isinstance(name, str):
        raise InvalidArgument(f"'signature_name' must be a string, got {type(name).__name__}")
    return name


def _decode_b64_tree(value: Any, where: str) -> Any:
    if isinstance(value, list):
        return [_decode_b64_tree(v, where) for v in value]
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise InvalidArgument(f"{where}: objects inside a tensor must be {{\"b64\": \"<base64 string>\"}}, got keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"{where}: invalid base64 in 'b64' value: {exc}") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidArgument(f"{where}: expected strings or {{\"b64\": ...}} for a {dtypes.STRING.tf_name} input, got {type(value).__name__}")


def _to_array(values: Any, spec: TensorSpec, where: str) -> np.ndarray:
    if spec.dtype is dtypes.STRING:
        return _string_array(_decode_b64_tree(values, where), where)
    want = spec.dtype.numpy
    try:
        if want.kind in "iu":
            # Refuse floats for integer inputs instead of silently truncating them.
            arr = np.asarray(values)
            if arr.dtype.kind not in "iub":
                raise TypeError(f"got {_kind_name(arr.dtype)}")
            if arr.dtype != want and arr.dtype.kind != "b" and arr.size:
                # astype wraps around silently: refuse what the input's type cannot hold.
                info = np.iinfo(want)
                lo, hi = arr.min(), arr.max()
                if lo < info.min or hi > info.max:
                    bad = lo if lo < info.min else hi
                    raise OverflowError(f"{bad} is outside {spec.dtype.tf_name}'s range [{info.min}, {info.max}]")
            return arr.astype(want, copy=False)
        return np.asarray(values, dtype=want)
    except ValueError as exc:
        msg = str(exc)
        if "inhomogeneous" in msg or "sequence" in msg:
            raise InvalidArgument(
                f"{where}: nested lists are ragged; every row must have the same length (expected shape {spec.describe()})"
            ) from None
        raise InvalidArgument(f"{where}: expected {spec.dtype.tf_name} values, {msg}") from None
    except (TypeError, OverflowError) as exc:
        raise InvalidArgument(f"{where}: expected {spec.dtype.tf_name} values ({spec.describe()}), {exc}") from None


def _kind_name(dt: np.dtype) -> str:
    return {"f": "floating-point numbers", "U": "strings", "O": "mixed or non-numeric values", "b": "booleans"}.get(dt.kind, str(dt))


def _string_array(tree: Any, where: str) -> np.ndarray:
    shape = []
    node = tree
    while isinstance(node, list):
        shape.append(len(node))
        if not node:
            break
        node = node[0]
    arr = np.empty(tuple(shape), dtype=object)
    try:
        arr[...] = tree
    except ValueError:
        raise InvalidArgument(f"{where}: nested lists are ragged; every row must have the same length") from None
    return arr


def decode_predict(doc: dict, sig: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """Inputs as numpy arrays, and whether the request used the row (`instances`) format."""
    if type(doc) is json_numbers.NumbersDoc:
        fast = _decode_numbers(doc, sig)
        if fast is not None:
            return fast
        doc = parse_body(doc.body)
    has_rows, has_cols = "instances" in doc, "inputs" in doc
    if has_rows == has_cols:
        raise InvalidArgument(
            "request must hold exactly one of 'instances' (row format) or 'inputs' (columnar format)"
            + ("; it holds both" if has_rows else "; it holds neither")
        )
    return (_decode_rows(doc["instances"], sig), True) if has_rows else (_decode_columns(doc["inputs"], sig), False)


def _decode_numbers(doc: json_numbers.NumbersDoc, sig: Signature) -> tuple[dict[str, np.ndarray], bool] | None:
    """A one-input signature of a floating-point type takes the array as it is (cast); anything
    else (several inputs, integers, strings) the general decoding of the same body."""
    if len(sig.inputs) != 1:
        return None
    (name, spec), = sig.inputs.items()
    want = spec.dtype.numpy
    if want.kind != "f":
        return None
    rows = "instances" in doc
    return {name: doc["instances" if rows else "inputs"].astype(want, copy=False)}, rows


def _decode_rows(instances: Any, sig: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise InvalidArgument(f"'instances' must be a list with one entry per example, got a JSON {type(instances).__name__}")
    if not instances:
        raise InvalidArgument("'instances' is empty; send at least one example")
    names = list(sig.inputs)
    named = [isinstance(i, dict) and not (set(i) == {"b64"}) for i in instances]
    if any(named):
        if not all(named):
            raise InvalidArgument("'instances' mixes named objects and bare values; use one form for every example")
        cols: dict[str, list] = {n: [] for n in names}
        for idx, inst in enumerate(instances):
            missing = [n for n in names if n not in inst]
            extra = [k for k in inst if k not in sig.inputs]
            if missing or extra:
                detail = []
                if missing:
                    detail.append(f"missing {missing}")
                if extra:
                    detail.append(f"unexpected {extra}")
                raise InvalidArgument(
                    f"'instances'[{idx}]: {', '.join(detail)}; each example must name exactly the inputs {names}"
                )
            for n in names:
                cols[n].append(inst[n])
        return {n: _to_array(cols[n], sig.inputs[n], f"input {n!r}") for n in names}
    if len(names) != 1:
        raise InvalidArgument(
            f"the signature has {len(names)} inputs {names}: each entry of 'instances' must be an object naming them"
        )
    return {names[0]: _to_array(instances, sig.inputs[names[0]], f"input {names[0]!r}")}


def _decode_columns(inputs: Any, sig: Signature) -> dict[str, np.ndarray]:
    names = list(sig.inputs)
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        extra = [k for k in inputs if k not in sig.inputs]
        missing = [n for n in names if n not in inputs]
        if missing or extra:
            parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
            raise InvalidArgument(f"'inputs': {', '.join(parts)}; the signature expects inputs {names}")
        return {n: _to_array(inputs[n], sig.inputs[n], f"input {n!r}") for n in names}
    if len(names) != 1:
        raise InvalidArgument(f"the signature has {len(names)} inputs {names}: 'inputs' must be an object naming them")
    return {names[0]: _to_array(inputs, sig.inputs[names[0]], f"input {names[0]!r}")}


# -- response -------------------------------------------------------------------------------
def encode_predict(outputs: dict[str, np.ndarray], rows: bool) -> bytes:
    values = {name: _json_ready(name, arr) for name, arr in outputs.items()}
    if not rows:
        if len(values) == 1:
            return dumps({"outputs": next(iter(values.values()))})
        return dumps({"outputs": values})
    if len(values) == 1:
        return dumps({"predictions": next(iter(values.values()))})
    batch = {name: (arr.shape[0] if arr.ndim else None) for name, arr in outputs.items()}
    sizes = set(batch.values())
    if len(sizes) != 1 or None in sizes:
        raise InvalidArgument(
            f"outputs have different batch sizes {batch}; the row format needs a common first dimension, use the columnar 'inputs' format"
        )
    n = sizes.pop()
    return dumps({"predictions": [{name: v[i] for name, v in values.items()} for i in range(n)]})


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def status_doc(statuses: Iterable[VersionStatus]) -> dict:
    return {
        "model_version_status": [
            {
                "version": str(st.version),
                "state": st.state.value,
                "status": {"error_code": st.error_code.value, "error_message": st.error_message},
            }
            for st in statuses
        ]
    }


def _tensor_info(spec: TensorSpec, tensor_name: str) -> dict:
    shape: dict[str, Any]
    if spec.shape is None:
        shape = {"dim": [], "unknown_rank": True}
    else:
        shape = {"dim": [{"size": str(d), "name": ""} for d in spec.shape], "unknown_rank": False}
    return {"dtype": spec.dtype.tf_name, "tensor_shape": shape, "name": tensor_name}


def signature_def_doc(sig: Signature) -> dict:
    return {
        "inputs": {k: _tensor_info(s, sig.input_tensor_names.get(k, k)) for k, s in sig.inputs.items()},
        "outputs": {k: _tensor_info(s, sig.output_tensor_names.get(k, k)) for k, s in sig.outputs.items()},
        "method_name": sig.method_name,
    }


def metadata_doc(model: str, version: int, signatures: dict[str, Signature]) -> dict:
    return {
        "model_spec": {"name": model, "signature_name": "", "version": str(version)},
        "metadata": {
            "signature_def": {
                "signature_def": {name: signature_def_doc(sig) for name, sig in signatures.items()}
            }
        },
    }
