"""ORT offline graph optimization: constant folding, redundant-node removal and operator
fusions (MatMul+Add into Gemm, GELU, LayerNorm, attention), saved as a new model file.

The server's sessions already apply every optimization when they load a version, so this pass
rarely changes inference latency; what it saves is the optimization work at each load. It keeps
the portable level (extended): the `all` level adds layout changes that tie a file to the
hardware it was optimized on.
"""

from __future__ import annotations

from hotserve.compress import model_io

LEVEL = "extended"


def optimize(src_dir: str, dst_dir: str) -> dict:
    import os

    import onnxruntime as ort

    os.makedirs(dst_dir, exist_ok=True)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = model_io.model_path(dst_dir)
    ort.InferenceSession(model_io.model_path(src_dir), so, providers=["CPUExecutionProvider"])
    return {"level": LEVEL}
