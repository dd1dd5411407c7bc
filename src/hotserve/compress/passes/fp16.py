"""fp16 weights: float initializers and activations become float16, the model's inputs and
outputs stay float32 (casts at the edges), so clients see no change.

Halves the file. On CPUs without native fp16 arithmetic ONNX Runtime computes many float16
operators by converting back and forth, so this is usually *slower* on CPU
(microsoft/onnxruntime#16778): the speed gate decides, as for every variant.
"""

from __future__ import annotations

from hotserve.compress import model_io


def convert(src_dir: str, dst_dir: str) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = model_io.load(model_io.model_path(src_dir))
    # keep_io_types: float32 in and out; the clients' payloads stay what they were.
    half = convert_float_to_float16(model, keep_io_types=True)
    model_io.save(half, dst_dir)
    return {"keep_io_types": True}
