"""MLServer custom runtime serving an ONNX model with onnxruntime (MLServer has no ONNX
runtime of its own). The bench copies this folder next to model.onnx and runs
`mlserver start` on its parent; requests arrive in KServe V2 JSON at /v2/models/mlp/infer."""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings, wellknown_filenames=["model.onnx"])
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = self.decode(payload.inputs[0], default_codec=NumpyCodec).astype(np.float32, copy=False)
        results = self._session.run(None, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, y) for name, y in zip(self._outputs, results)],
        )
