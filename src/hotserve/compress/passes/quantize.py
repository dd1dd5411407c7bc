"""int8 quantization with ONNX Runtime's tools.

- dynamic: weights stored as int8, activations quantized per batch at run time
  (`quantize_dynamic`); no calibration data. Pays off where large MatMuls dominate (transformer
  encoders); on tiny models the quantize/dequantize work can cost more than it saves.
- static: weights and activations int8 with scales fixed by a calibration run over
  representative inputs (`quantize_static`, QDQ format, after `quant_pre_process`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Iterator, Mapping

import numpy as np

from hotserve.compress import model_io

log = logging.getLogger("hotserve.compress")

CALIBRATION_BATCH = 32
MAX_CALIBRATION_ROWS = 512


def _pre_process(src: str, dst: str) -> str:
    """quant_pre_process (shape inference + optimization) as ORT recommends before quantizing;
    returns the file to quantize (the original if pre-processing cannot handle the model)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(src, dst, skip_symbolic_shape=False)
        return dst
    except Exception as exc:  # symbolic shape inference gives up on some graphs: quantize as is
        log.warning("quant_pre_process failed (%s); quantizing the model as it is", exc)
        return src


def dynamic(src_dir: str, dst_dir: str) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    os.makedirs(dst_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = _pre_process(model_io.model_path(src_dir), os.path.join(tmp, "pre.onnx"))
        quantize_dynamic(src, model_io.model_path(dst_dir), weight_type=QuantType.QInt8)
    return {"mode": "dynamic", "weight_type": "int8", "activations": "uint8, per batch",
            "pre_processed": src != model_io.model_path(src_dir)}


class ArrayReader:
    """onnxruntime.quantization.CalibrationDataReader over in-memory input arrays, in batches."""

    def __init__(self, inputs: Mapping[str, np.ndarray], batch: int = CALIBRATION_BATCH,
                 max_rows: int = MAX_CALIBRATION_ROWS) -> None:
        rows = min(next(iter(inputs.values())).shape[0], max_rows)
        self.rows = rows
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{k: v[i:i + batch] for k, v in inputs.items()} for i in range(0, rows, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # part of the reader interface; one pass is all calibration needs
        pass


def static(src_dir: str, dst_dir: str, calibration: Mapping[str, np.ndarray], source: str) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(ArrayReader, CalibrationDataReader):
        pass

    os.makedirs(dst_dir, exist_ok=True)
    reader = Reader(calibration)
    with tempfile.TemporaryDirectory() as tmp:
        src = _pre_process(model_io.model_path(src_dir), os.path.join(tmp, "pre.onnx"))
        # QDQ with int8 activations and weights: ORT's recommended default on x86 CPUs.
        quantize_static(src, model_io.model_path(dst_dir), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return {"mode": "static", "format": "QDQ", "weight_type": "int8", "activation_type": "int8",
            "calibration": source, "calibration_rows": reader.rows, "calibrate_method": "minmax",
            "pre_processed": src != model_io.model_path(src_dir)}
