"""ONNX model files: where a variant lives, its size and parameter count."""

from __future__ import annotations

import os

import numpy as np

MODEL_FILE = "model.onnx"

# Element types counted as parameters (weights); int64 initializers are shapes and indices.
_PARAM_TYPES = {1, 10, 11, 2, 3, 6, 16}  # FLOAT, FLOAT16, DOUBLE, UINT8, INT8, INT32 (quantized biases), BFLOAT16


def model_path(version_dir: str) -> str:
    return os.path.join(version_dir, MODEL_FILE)


def load(path: str):
    import onnx

    return onnx.load(path)


def topological_sort(model) -> None:
    """Order the graph's nodes so each comes after the nodes producing its inputs, as ONNX
    requires (some converters append the Cast nodes they add at the end)."""
    g = model.graph
    known = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            return  # a cycle or a dangling input: leave it to the checker to report
        pending = rest
    nodes = [type(n)() for n in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del g.node[:]
    g.node.extend(nodes)


def save(model, version_dir: str) -> str:
    """Write model as <version_dir>/model.onnx after onnx's checker accepted it."""
    import onnx

    os.makedirs(version_dir, exist_ok=True)
    topological_sort(model)
    onnx.checker.check_model(model)
    path = model_path(version_dir)
    onnx.save(model, path)
    return path


def size_bytes(version_dir: str) -> int:
    """Bytes of the model's files (model.onnx and any external data beside it)."""
    return sum(os.path.getsize(os.path.join(version_dir, f)) for f in os.listdir(version_dir)
               if os.path.isfile(os.path.join(version_dir, f)) and not f.endswith(".npz"))


def parameter_count(model) -> int:
    """Weight elements in the graph's initializers (and Constant nodes), of any float or 8-bit type."""
    n = 0
    for init in model.graph.initializer:
        if init.data_type in _PARAM_TYPES:
            n += int(np.prod(init.dims)) if len(init.dims) else 1
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in _PARAM_TYPES:
                    n += int(np.prod(attr.t.dims)) if len(attr.t.dims) else 1
    return n
