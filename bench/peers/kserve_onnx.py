"""The KServe peer: KServe's own Python model server (`kserve.ModelServer`) with an ONNX
`kserve.Model`, written the way KServe's docs and its sklearn/xgboost servers write one:
`load()` builds the session, `predict()` takes the decoded payload (a dict for the V1
protocol, an InferRequest for V2), runs it, and returns `get_predict_response(...)`.

Run by the bench with the interpreter of bench/.venv-kserve (kserve is not a project
dependency; its pins may conflict with hotserve's):

    python bench/peers/kserve_onnx.py --model_name mlp --model_path model.onnx \
        --http_port P --grpc_port Q --enable_latency_logging false

Everything else is kserve's default (1 uvicorn worker, gRPC server on with 4 threads, the
default asyncio executor, prometheus metrics). Changed here, because kserve has no flag for
them: the REST and gRPC servers listen on 127.0.0.1 (kserve binds 0.0.0.0 and [::]), and no
log line per request (see _quiet_request_logs; a --log_config_file given on the command line
wins).
"""

from __future__ import annotations

import argparse
import copy
import json
import os

import kserve
import numpy as np
import onnxruntime as ort
from kserve import logging as kserve_logging
from kserve import model_server
from kserve.protocol.grpc import server as grpc_server
from kserve.protocol.rest import server as rest_server
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import from_np_dtype, generate_uuid, get_predict_input, get_predict_response

HOST = "127.0.0.1"


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        opts = ort.SessionOptions()
        # One intra-op thread, as in the lean app: kserve runs predict() on its event loop.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    # kserve --workers N > 1 starts its REST workers with multiprocessing's spawn and pickles
    # the model registry into them; a session cannot be pickled, so each worker builds its own.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "session"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.load()

    # A plain def: kserve calls it inline on its event loop (an async def would be too).
    def predict(self, payload: dict | InferRequest, headers: dict | None = None) -> dict | InferResponse:
        x = np.asarray(get_predict_input(payload), dtype=np.float32)
        ys = self.session.run(None, {self.input_name: x})
        if not isinstance(payload, InferRequest):
            return get_predict_response(payload, ys[0], self.name)  # V1: {"predictions": y.tolist()}
        # V2: get_predict_response names its output "output-0"; a client asking for the
        # model's own output by name (as the binary extension's "outputs" does) needs the
        # ONNX output names.
        outputs = []
        for name, y in zip(self.output_names, ys):
            out = InferOutput(name=name, shape=list(y.shape), datatype=from_np_dtype(y.dtype))
            out.set_data_from_numpy(y, binary_data=payload.use_binary_outputs)
            outputs.append(out)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or generate_uuid(),
                             use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs)


def _listen_on_loopback() -> None:
    """kserve hardcodes host="0.0.0.0" for uvicorn and "[::]:port" for gRPC; the bench
    serves on 127.0.0.1 only."""
    init = rest_server.RESTServer.__init__

    def rest_init(self, *a, **kw):
        init(self, *a, **kw)
        self.config.host = HOST

    rest_server.RESTServer.__init__ = rest_init

    real_aio_server = grpc_server.aio.server

    def aio_server(*a, **kw):
        srv = real_aio_server(*a, **kw)
        add = srv.add_insecure_port
        srv.add_insecure_port = lambda addr: add(addr.replace("[::]", HOST))
        return srv

    grpc_server.aio = type("aio", (), {"server": staticmethod(aio_server)})


def _quiet_request_logs(workdir: str) -> None:
    """No line per request, like every server in the bench: kserve's own log config with the
    uvicorn access log and the kserve.trace logger (the timing middleware's and the latency
    lines) at WARNING. Given to kserve as its --log_config_file, so uvicorn worker processes
    (--workers > 1) load it too."""
    cfg = copy.deepcopy(kserve_logging.KSERVE_LOG_CONFIG)
    for name in ("uvicorn.access", "kserve.trace"):
        cfg["loggers"][name]["level"] = "WARNING"
    path = os.path.join(workdir, "kserve-log-config.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    model_server.args.log_config_file = path


def _quiet_grpc_call_logs() -> None:
    """kserve's gRPC LoggingInterceptor logs every call at INFO on the kserve logger (its
    startup lines share that logger, so the level stays): pass calls straight through."""

    async def intercept_service(self, continuation, handler_call_details):
        return await continuation(handler_call_details)

    grpc_server.LoggingInterceptor.intercept_service = intercept_service


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True, help="the ONNX file")
    args, _ = parser.parse_known_args()
    if args.log_config_file is None:
        _quiet_request_logs(os.getcwd())
    _quiet_grpc_call_logs()
    _listen_on_loopback()
    model = OnnxModel(args.model_name, args.model_path)
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
