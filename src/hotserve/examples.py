"""Small ONNX models generated in-process (no downloads), for the demo, tests and benchmarks."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

OPSET = 17
_IR_VERSION = 8  # readable by every onnxruntime release of the last years


def save_graph(graph, path: str) -> str:
    """Write an ONNX graph as a model at hotserve's opset and IR version, checked."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hotserve")
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(model, path)
    return path


def make_mlp(path: str, sizes: Sequence[int] = (784, 256, 256, 10), seed: int = 0) -> str:
    """An MLP with ReLU between layers: input 'x' [batch, sizes[0]] -> output 'y' [batch, sizes[-1]]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        gemm_out = out if out == "y" else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm_out]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=inits,
    )
    return save_graph(graph, path)


def make_affine(path: str, offset: float, dim: int = 4, scale: float = 1.0) -> str:
    """y = x * scale + offset, input 'x' [batch, dim]. Tests set offset to the version number,
    so every output proves which version computed it."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["xs"]),
            helper.make_node("Add", ["xs", "offset"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])],
        initializer=[
            numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array(offset, dtype=np.float32), "offset"),
        ],
    )
    return save_graph(graph, path)


def make_two_io(path: str, offset: float = 0.0) -> str:
    """Two inputs of different dtypes and two outputs: 'a' float [batch,3], 'b' int64 [batch]
    -> 'sum' = a + offset, 'b_out' = b * 2. For named-input and multi-output formats."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "off"], ["sum"]),
            helper.make_node("Mul", ["b", "two"], ["b_out"]),
        ],
        "two_io",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b_out", TensorProto.INT64, ["batch"]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(offset, dtype=np.float32), "off"),
            numpy_helper.from_array(np.array(2, dtype=np.int64), "two"),
        ],
    )
    return save_graph(graph, path)


def make_affine_savedmodel(path: str, offset: float, dim: int = 4) -> str:
    """The SavedModel twin of make_affine: serving_default maps 'x' [batch, dim] to
    'y' = x + offset. Needs TensorFlow (the `tensorflow` extra)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.offset = tf.Variable(offset, dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x + self.offset}

    module = Affine()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def make_embedding_model(path: str, rows: int = 1000, dim: int = 8, dense: int = 4, seed: int = 0) -> str:
    """A CTR-shaped model: ids 'item' [batch] -> Gather from the table 'item_embedding' [rows, dim],
    concatenated with 'dense' [batch, dense] -> Gemm with 'head.weight' [dim + dense, 1] and
    'head.bias' [1] -> 'score' [batch, 1]. Live-parameter tests and bench/parameters.py use it
    (the table is hosted by hotserve, the head stays in the session)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = rng.standard_normal((rows, dim), dtype=np.float32) * np.float32(0.1)
    w = rng.standard_normal((dim + dense, 1), dtype=np.float32) * np.float32(0.3)
    b = np.zeros(1, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["item_embedding", "item"], ["emb"]),
            helper.make_node("Concat", ["emb", "dense"], ["h"], axis=1),
            helper.make_node("Gemm", ["h", "head.weight", "head.bias"], ["score"]),
        ],
        "ctr",
        [helper.make_tensor_value_info("item", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", dense])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(table, "item_embedding"), numpy_helper.from_array(w, "head.weight"),
                     numpy_helper.from_array(b, "head.bias")],
    )
    return save_graph(graph, path)
