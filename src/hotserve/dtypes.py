"""One table of tensor element types and their names in each vocabulary we speak.

numpy is the internal type; TensorFlow's DataType enum names (DT_FLOAT...) appear in TF Serving
metadata, KServe V2 names (FP32...) in V2 payloads, ONNX's "tensor(float)" strings in sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    numpy: np.dtype
    tf_name: str  # tensorflow DataType enum name
    tf_enum: int  # tensorflow DataType enum value
    v2_name: str  # KServe V2 / Open Inference Protocol datatype
    onnx_name: str  # onnxruntime NodeArg.type element name


_OBJECT = np.dtype(object)

_TABLE = [
    DType(np.dtype(np.float32), "DT_FLOAT", 1, "FP32", "float"),
    DType(np.dtype(np.float64), "DT_DOUBLE", 2, "FP64", "double"),
    DType(np.dtype(np.int32), "DT_INT32", 3, "INT32", "int32"),
    DType(np.dtype(np.uint8), "DT_UINT8", 4, "UINT8", "uint8"),
    DType(np.dtype(np.int16), "DT_INT16", 5, "INT16", "int16"),
    DType(np.dtype(np.int8), "DT_INT8", 6, "INT8", "int8"),
    DType(_OBJECT, "DT_STRING", 7, "BYTES", "string"),
    DType(np.dtype(np.int64), "DT_INT64", 9, "INT64", "int64"),
    DType(np.dtype(np.bool_), "DT_BOOL", 10, "BOOL", "bool"),
    DType(np.dtype(np.uint16), "DT_UINT16", 17, "UINT16", "uint16"),
    DType(np.dtype(np.float16), "DT_HALF", 19, "FP16", "float16"),
    DType(np.dtype(np.uint32), "DT_UINT32", 22, "UINT32", "uint32"),
    DType(np.dtype(np.uint64), "DT_UINT64", 23, "UINT64", "uint64"),
]

BY_NUMPY: dict[np.dtype, DType] = {d.numpy: d for d in _TABLE}
BY_TF_NAME: dict[str, DType] = {d.tf_name: d for d in _TABLE}
BY_TF_ENUM: dict[int, DType] = {d.tf_enum: d for d in _TABLE}
BY_V2_NAME: dict[str, DType] = {d.v2_name: d for d in _TABLE}
BY_ONNX_NAME: dict[str, DType] = {d.onnx_name: d for d in _TABLE}

STRING = BY_TF_NAME["DT_STRING"]


def from_numpy(dtype: np.dtype) -> DType:
    """The table entry for a numpy dtype; unicode and bytes arrays count as strings."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return STRING
    try:
        return BY_NUMPY[dtype]
    except KeyError:
        raise ValueError(f"unsupported tensor element type {dtype}") from None


def from_onnx_type(type_str: str) -> DType:
    """Map an onnxruntime NodeArg type such as 'tensor(float)'."""
    inner = type_str[len("tensor(") : -1] if type_str.startswith("tensor(") else type_str
    try:
        return BY_ONNX_NAME[inner]
    except KeyError:
        raise ValueError(f"unsupported ONNX tensor type {type_str!r}") from None
