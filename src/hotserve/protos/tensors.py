"""numpy <-> tensorflow.TensorProto codec for the TF Serving gRPC front end and warm-up replay.

Decoding accepts both encodings clients use: tensor_content (raw little-endian bytes, what
tf.make_tensor_proto emits for most numeric arrays) and the typed repeated fields (what
hand-written clients in other languages tend to emit). Encoding always uses tensor_content
for numeric data because it needs no per-element Python work.

The element-type table is hotserve.dtypes; this module only adds the few TensorFlow types the
rest of the server does not serve but a TensorProto may still carry (complex, bfloat16).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hotserve import dtypes
from hotserve.protos.tensorflow.core.framework import tensor_pb2, types_pb2

TensorProto = tensor_pb2.TensorProto

DT_STRING = types_pb2.DT_STRING
DT_HALF = types_pb2.DT_HALF
DT_BFLOAT16 = types_pb2.DT_BFLOAT16

# Types outside hotserve.dtypes' table that are cheap to decode anyway. bfloat16 is resolved
# lazily because numpy has no bfloat16 of its own (ml_dtypes, a TensorFlow dependency, does).
_EXTRA_BY_ENUM: dict[int, np.dtype] = {
    types_pb2.DT_COMPLEX64: np.dtype(np.complex64),
    types_pb2.DT_COMPLEX128: np.dtype(np.complex128),
}
_EXTRA_BY_NUMPY: dict[np.dtype, int] = {v: k for k, v in _EXTRA_BY_ENUM.items()}

# Which typed field carries each type when tensor_content is empty (TensorFlow's convention:
# narrow integers widen into int_val, 16-bit floats travel as bit patterns in half_val).
_FIELD_BY_ENUM: dict[int, str] = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
}
_TYPED_FIELDS = sorted(set(_FIELD_BY_ENUM.values()))

# The numpy type each repeated field's values arrive as, before narrowing to the tensor's type.
_FIELD_NUMPY: dict[str, np.dtype] = {
    "float_val": np.dtype(np.float32),
    "double_val": np.dtype(np.float64),
    "int_val": np.dtype(np.int64),  # int64 so out-of-range int8/uint16 values can be detected
    "int64_val": np.dtype(np.int64),
    "uint32_val": np.dtype(np.uint32),
    "uint64_val": np.dtype(np.uint64),
    "bool_val": np.dtype(np.bool_),
    "half_val": np.dtype(np.int64),
    "scomplex_val": np.dtype(np.float32),
    "dcomplex_val": np.dtype(np.float64),
}


@functools.lru_cache(maxsize=256)
def _enum_name(enum: int) -> str:
    try:
        return types_pb2.DataType.Name(enum)
    except ValueError:
        return f"DataType {enum}"


def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise ValueError("DT_BFLOAT16 tensors need the ml_dtypes package, which is not installed") from None
    return np.dtype(ml_dtypes.bfloat16)


def dtype_from_enum(enum: int) -> np.dtype:
    """numpy dtype of a tensorflow.DataType value (DT_STRING maps to object, holding bytes)."""
    entry = dtypes.BY_TF_ENUM.get(enum)
    if entry is not None:
        return entry.numpy
    if enum in _EXTRA_BY_ENUM:
        return _EXTRA_BY_ENUM[enum]
    if enum == DT_BFLOAT16:
        return _bfloat16()
    raise ValueError(f"unsupported tensor dtype {_enum_name(enum)}")


@functools.lru_cache(maxsize=256)  # a dict lookup per tensor; string dtypes differ by length ('<U3', '<U7')
def enum_from_dtype(dtype: np.dtype | type) -> int:
    """tensorflow.DataType value for a numpy dtype; str/bytes/object count as DT_STRING."""
    return _enum_from_dtype(dtype)


def _enum_from_dtype(dtype: np.dtype | type) -> int:
    dtype = np.dtype(dtype)
    if dtype.byteorder not in ("=", "|"):  # '>f4' must find the same entry as 'float32'
        dtype = dtype.newbyteorder("=")
    if dtype in _EXTRA_BY_NUMPY:
        return _EXTRA_BY_NUMPY[dtype]
    if dtype.name == "bfloat16":  # ml_dtypes' type; matched by name to avoid importing it
        return DT_BFLOAT16
    return dtypes.from_numpy(dtype).tf_enum


@functools.lru_cache(maxsize=256)
def _little_endian(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("<")


def _shape(tp: Any) -> tuple[int, ...]:
    shape_proto = tp.tensor_shape
    if shape_proto.unknown_rank:
        raise ValueError("tensor_shape has unknown_rank set; a tensor value needs a known shape")
    shape = tuple(d.size for d in shape_proto.dim)
    if any(s < 0 for s in shape):
        raise ValueError(f"tensor_shape {list(shape)} has a negative dimension; a tensor value needs concrete sizes")
    if len(shape) > 32 or math.prod(d for d in shape if d) >= 1 << 59:
        raise ValueError(f"tensor_shape {list(shape)[:8]}{'...' if len(shape) > 8 else ''} describes more elements "
                         "than any array can hold (at most 32 dimensions, 2**59 elements)")
    return shape


def to_numpy(tp: Any, budget: Any = None) -> np.ndarray:
    """Decode a TensorProto (ours, or any message with the same fields, e.g. TensorFlow's).

    Numeric results decoded from tensor_content are zero-copy views of the proto's bytes and
    therefore read-only; copy before mutating. DT_STRING yields an object array of bytes.
    Raises ValueError naming the inconsistency when the proto does not describe a valid tensor.
    `budget` (protocols.limits.TensorBudget) is charged with a broadcast's size before the
    broadcast is allocated: one value filling a huge shape is where a small message grows.
    """
    enum = tp.dtype
    if enum == types_pb2.DT_INVALID:
        raise ValueError("tensor dtype is DT_INVALID (unset)")
    name = _enum_name(enum)
    shape = _shape(tp)
    count = math.prod(shape)
    np_dtype = dtype_from_enum(enum)
    field = _FIELD_BY_ENUM.get(enum)

    content = tp.tensor_content
    if content:
        # TensorFlow ignores the typed fields when tensor_content is set; so do we.
        if enum == DT_STRING:
            raise ValueError("DT_STRING tensors must use string_val, not tensor_content")
        needed = count * np_dtype.itemsize
        if len(content) != needed:
            raise ValueError(
                f"tensor_content holds {len(content)} bytes but shape {list(shape)} of {name} needs {needed}"
            )
        return np.frombuffer(content, dtype=_little_endian(np_dtype)).reshape(shape)

    if field is None:
        raise ValueError(f"{name} tensors must use tensor_content; it is empty")
    for other in _TYPED_FIELDS:
        if other != field and len(getattr(tp, other)):
            raise ValueError(f"{name} tensor carries values in {other}; this type uses {field} or tensor_content")

    values = getattr(tp, field)
    if budget is not None and len(values) != count:
        budget.charge(f"{field} broadcast", shape, 8 if enum == DT_STRING else np_dtype.itemsize)
    if enum == DT_STRING:
        return _strings(values, shape, count, name)

    # Complex types interleave real and imaginary parts: two stored numbers per element.
    per_element = 2 if field in ("scomplex_val", "dcomplex_val") else 1
    stored = len(values)
    if stored % per_element:
        raise ValueError(f"{field} holds {stored} numbers; {name} needs (real, imag) pairs")
    given = stored // per_element
    if given != count and not (given == 1 and count > 1):
        raise ValueError(
            f"{field} holds {given} values but shape {list(shape)} of {name} needs {count}"
            " (or exactly 1, broadcast to every element)"
        )

    raw = np.fromiter(values, dtype=_FIELD_NUMPY[field], count=stored)
    arr = _narrow(raw, enum, np_dtype, field, name)
    if given != count:  # a single value fills the tensor, as in tf.make_ndarray
        return np.full(shape, arr[0], dtype=np_dtype)
    return arr.reshape(shape)


def _narrow(raw: np.ndarray, enum: int, np_dtype: np.dtype, field: str, name: str) -> np.ndarray:
    """Convert a typed field's values to the tensor's element type, refusing lossy wraps."""
    if field == "half_val":
        # 16-bit patterns; accept both zero-extended (TensorFlow) and sign-extended encodings.
        if raw.size and (raw.min() < -(1 << 15) or raw.max() > 0xFFFF):
            raise ValueError(f"half_val holds a value outside 16 bits; {name} stores bit patterns there")
        return (raw & 0xFFFF).astype(np.uint16).view(np_dtype)
    if field in ("scomplex_val", "dcomplex_val"):
        return raw.view(np_dtype)
    if field == "int_val" and np_dtype != raw.dtype:
        info = np.iinfo(np_dtype)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            raise ValueError(f"int_val holds a value outside {name}'s range [{info.min}, {info.max}]")
    return raw.astype(np_dtype, copy=False)


def _strings(values: Sequence[bytes], shape: tuple[int, ...], count: int, name: str) -> np.ndarray:
    given = len(values)
    if given != count and not (given == 1 and count > 1):
        raise ValueError(
            f"string_val holds {given} values but shape {list(shape)} of {name} needs {count}"
            " (or exactly 1, broadcast to every element)"
        )
    out = np.empty(count, dtype=object)
    if given == count:
        # Assigning element by element keeps numpy from trying to build a fixed-width 'S' array.
        for i, v in enumerate(values):
            out[i] = v
    else:
        out.fill(values[0])
    return out.reshape(shape)


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    raise ValueError(f"string tensor element of type {type(v).__name__} is neither bytes nor str")


def from_numpy(arr: Any, out: TensorProto | None = None) -> TensorProto:
    """Encode an array (or anything np.asarray accepts) as a TensorProto.

    Numeric and bool data go into tensor_content; str/bytes/object arrays into string_val
    (str is UTF-8 encoded). Pass `out` to fill (after clearing) an existing message, e.g. a
    map entry of a PredictResponse, which saves copying a finished TensorProto into place.
    """
    arr = np.asarray(arr)
    if out is None:
        tp = TensorProto()
    else:
        tp = out
        tp.Clear()
    tp.dtype = enum_from_dtype(arr.dtype)
    for size in arr.shape:
        tp.tensor_shape.dim.add().size = size
    if tp.dtype == DT_STRING:
        if arr.dtype.kind == "U":
            tp.string_val.extend(s.encode("utf-8") for s in arr.reshape(-1).tolist())
        else:
            tp.string_val.extend(_as_bytes(v) for v in arr.reshape(-1).tolist())
    else:
        tp.tensor_content = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return tp
