"""ONNX's protobuf classes without importing the `onnx` package.

Every worker reads each version's graph at load (runtimes/onnx.py splits it for live
parameters). `import onnx` costs about 12 MiB of RSS per process (its C++ extension and ~160
modules) for what is a protobuf parse; the generated `onnx_ml_pb2` module alone costs about
2 MiB. It is registered under its own name, so a later `import onnx` in the same process reuses
it (one set of message classes, one descriptor-pool registration).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Iterable

import numpy as np

_PB2 = "onnx.onnx_ml_pb2"

# TensorProto.DataType of the float types hotserve hosts (the values are ONNX's, fixed by the spec).
_FLOAT_TYPES = {1: np.dtype("<f4"), 10: np.dtype("<f2"), 11: np.dtype("<f8")}
_TYPE_OF = {dt.name: code for code, dt in _FLOAT_TYPES.items()}


def pb2() -> ModuleType:
    """The `onnx.onnx_ml_pb2` module, loaded from its file if onnx is not imported yet."""
    mod = sys.modules.get(_PB2)
    if mod is not None:
        return mod
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the onnx package is not installed (pip install onnx)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "onnx_ml_pb2.py")
    pb_spec = importlib.util.spec_from_file_location(_PB2, path)
    mod = importlib.util.module_from_spec(pb_spec)
    sys.modules[_PB2] = mod
    try:
        pb_spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[_PB2]
        raise
    return mod


def load_model(path: str):
    """The ModelProto in `path`. Graphs with external data go through onnx.load, which knows
    where to find it; everything else is one protobuf parse."""
    model = pb2().ModelProto()
    with open(path, "rb") as f:
        model.ParseFromString(f.read())
    if any(t.data_location == t.EXTERNAL for t in model.graph.initializer):
        import onnx

        return onnx.load(path)
    return model


def float_dtype(data_type: int) -> np.dtype | None:
    """The numpy dtype of a float TensorProto.DataType; None for every other type."""
    return _FLOAT_TYPES.get(data_type)


def float_type(dtype: np.dtype) -> int:
    """The TensorProto.DataType of a float numpy dtype."""
    return _TYPE_OF[np.dtype(dtype).name]


def float_array(tensor) -> np.ndarray:
    """A float TensorProto's values as a new, writable array (raw_data or the typed field)."""
    dtype = _FLOAT_TYPES[tensor.data_type]
    dims = tuple(tensor.dims)
    if tensor.raw_data:
        arr = np.frombuffer(tensor.raw_data, dtype=dtype)
    elif tensor.data_type == 10:  # float16 bits travel in int32_data
        arr = np.asarray(tensor.int32_data, dtype=np.uint16).view(dtype)
    elif tensor.data_type == 11:
        arr = np.asarray(tensor.double_data, dtype=dtype)
    else:
        arr = np.asarray(tensor.float_data, dtype=dtype)
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def tensor_value_info(name: str, data_type: int, shape: Iterable[int | str | None] | None):
    """A ValueInfoProto for a tensor input; dims are sizes, symbolic names or None (unknown)."""
    vi = pb2().ValueInfoProto()
    vi.name = name
    tt = vi.type.tensor_type
    tt.elem_type = data_type
    if shape is not None:
        tt.shape.SetInParent()
        for d in shape:
            dim = tt.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str):
                dim.dim_param = d
    return vi
