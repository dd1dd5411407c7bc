"""The lean app: the server a skilled engineer writes in an afternoon to serve an ONNX model
fast (issue 10's reference). TF Serving's REST JSON format, at the same path as hotserve's.

Run by the bench exactly as the issue defines it:
    uvicorn lean_app:app --app-dir bench/peers --workers 2 --loop uvloop --http httptools --no-access-log
with BENCH_MODEL_PATH pointing at the ONNX file. Each worker process loads its own session
with one intra-op and one inter-op thread, and runs it inline on its event loop (no thread
hop: the model takes well under a millisecond).
"""

import os

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request, Response

MODEL_NAME = os.environ.get("BENCH_MODEL_NAME", "mlp")
_opts = ort.SessionOptions()
_opts.intra_op_num_threads = 1
_opts.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ.get("BENCH_MODEL_PATH", "model.onnx"), sess_options=_opts,
                               providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name

app = FastAPI()


@app.get(f"/v1/models/{MODEL_NAME}")
async def status() -> Response:
    return Response(b'{"model_version_status":[{"version":"1","state":"AVAILABLE"}]}', media_type="application/json")


@app.post(f"/v1/models/{MODEL_NAME}:predict")
async def predict(request: Request) -> Response:
    body = orjson.loads(await request.body())
    x = np.asarray(body["instances"], dtype=np.float32)
    y = session.run(None, {input_name: x})[0]
    # The bytes as they are: no response class that would encode them again.
    return Response(orjson.dumps({"predictions": y.tolist()}), media_type="application/json")
