"""ONNX Runtime servable: one InferenceSession per version."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from hotserve import dtypes
from hotserve.errors import LoadError
from hotserve.runtimes.base import DEFAULT_SIGNATURE, Signature, TensorSpec, get_signature

MODEL_FILE = "model.onnx"


def _shape(dims: list) -> tuple[int, ...] | None:
    if dims is None:
        return None
    # Symbolic ('batch') and unknown (None) dims are both dynamic to a client.
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)


def _spec(arg) -> TensorSpec:
    return TensorSpec(arg.name, dtypes.from_onnx_type(arg.type), _shape(arg.shape))


class OnnxServable:
    runtime = "onnxruntime"

    def __init__(self, version_dir: str, intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
        import onnxruntime as ort

        path = os.path.join(version_dir, MODEL_FILE)
        opts = ort.SessionOptions()
        # 0 lets onnxruntime pick (one thread per core); the operator can pin it.
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise LoadError(f"onnxruntime could not load {path}: {exc}") from exc
        try:
            inputs = {a.name: _spec(a) for a in self._session.get_inputs()}
            outputs = {a.name: _spec(a) for a in self._session.get_outputs()}
        except ValueError as exc:
            raise LoadError(f"{path}: {exc}") from exc
        self._output_names = list(outputs)
        self.signatures = {DEFAULT_SIGNATURE: Signature(inputs=inputs, outputs=outputs)}

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        get_signature(self, signature_name)
        results = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, results))

    def unload(self) -> None:
        # Dropping the last reference frees the session's arena.
        self._session = None
