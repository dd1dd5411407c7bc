"""Pick the runtime for a version directory from the files it holds."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hotserve.errors import LoadError
from hotserve.runtimes.base import Servable


@dataclass(frozen=True)
class RuntimeOptions:
    intra_op_threads: int = 0
    inter_op_threads: int = 0


# Checked in order; the first marker file present decides.
_MARKERS = [
    ("model.onnx", "onnxruntime"),
    ("model.py", "python"),
    ("saved_model.pb", "tensorflow"),
    ("saved_model.pbtxt", "tensorflow"),
]


def detect_runtime(version_dir: str) -> str:
    for marker, runtime in _MARKERS:
        if os.path.isfile(os.path.join(version_dir, marker)):
            return runtime
    expected = " or ".join(m for m, _ in _MARKERS)
    raise LoadError(f"{version_dir} holds no model file: expected {expected}")


def load_servable(version_dir: str, options: RuntimeOptions | None = None) -> Servable:
    options = options or RuntimeOptions()
    runtime = detect_runtime(version_dir)
    if runtime == "onnxruntime":
        from hotserve.runtimes.onnx import OnnxServable

        return OnnxServable(version_dir, options.intra_op_threads, options.inter_op_threads)
    if runtime == "tensorflow":
        # Imported here, and tensorflow only inside it, so servers without SavedModels start fast.
        from hotserve.runtimes.tensorflow import SavedModelServable

        return SavedModelServable(version_dir, options.intra_op_threads, options.inter_op_threads)
    from hotserve.runtimes.python import PythonServable

    return PythonServable(version_dir)
