"""The naive FastAPI peer: the app people often write first to serve an ONNX model (pydantic
request model, np.array(instances), session.run, .tolist(), a plain `def` endpoint in
FastAPI's thread pool, onnxruntime's default threads), answering TF Serving's REST JSON
format. The bench's stronger reference is lean_app.py.

Run by the bench as
    uvicorn fastapi_naive:app --app-dir bench/peers --workers 2 --no-access-log
with BENCH_MODEL_PATH pointing at the ONNX file. Each worker process loads its own session
with onnxruntime's default options.
"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_NAME = os.environ.get("BENCH_MODEL_NAME", "mlp")
session = ort.InferenceSession(os.environ.get("BENCH_MODEL_PATH", "model.onnx"), providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name

app = FastAPI()


class PredictRequest(BaseModel):
    instances: list[list[float]]


@app.get(f"/v1/models/{MODEL_NAME}")
def status():
    return {"model_version_status": [{"version": "1", "state": "AVAILABLE"}]}


# A plain `def` endpoint: FastAPI runs it in its thread pool, as its docs advise for blocking code.
@app.post(f"/v1/models/{MODEL_NAME}:predict")
def predict(req: PredictRequest):
    x = np.array(req.instances, dtype=np.float32)
    y = session.run(None, {input_name: x})[0]
    return {"predictions": y.tolist()}
