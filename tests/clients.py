"""Client families written by others, each as a generator of (version, output) for one input,
and a runner that keeps several of them busy across hot swaps and checks every answer.
Imports are lazy: test modules `importorskip` what they need first."""

from __future__ import annotations

import threading

import numpy as np


def rest(server, x):
    import httpx

    with httpx.Client(timeout=30) as c:
        while True:
            r = c.post(server.url + "/v1/models/m:predict", json={"instances": x.tolist()})
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text}")
            yield int(r.headers["x-model-version"]), np.array(r.json()["predictions"], np.float32)


def tfs_grpc(server, x):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "m"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    try:
        while True:
            resp = stub.Predict(req, timeout=30)
            yield resp.model_spec.version.value, tf.make_ndarray(resp.outputs["y"])
    finally:
        channel.close()


def triton_http(server, x, binary: bool = True):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    try:
        while True:
            res = c.infer("m", [inp], outputs=[out])
            yield int(res.get_response()["model_version"]), res.as_numpy("y")
    finally:
        c.close()


def triton_grpc(server, x):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc_target)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        while True:
            res = c.infer("m", [inp])
            yield int(res.get_response().model_version), res.as_numpy("y")
    finally:
        c.close()


FAMILIES = {"rest": rest, "tensorflow-serving-api": tfs_grpc, "tritonclient.http": triton_http,
            "tritonclient.grpc": triton_grpc}


class FamilyClients:
    """One thread per (name, family): each sends its own input (value i) in a loop bounded in
    count, and records an error for any failure, any answer that is not x + the version it
    names, and any version lower than its previous one."""

    def __init__(self, server, families: list[tuple[str, object]], rows: int = 1, max_requests: int = 200_000) -> None:
        self.server = server
        self.rows = rows
        self.max_requests = max_requests
        self.errors: list[str] = []
        self.seen: dict[str, list[int]] = {name: [] for name, _ in families}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i, name, fam)) for i, (name, fam) in enumerate(families)]

    def _run(self, i: int, name: str, family) -> None:
        x = np.full((self.rows, 4), float(i), np.float32)
        gen, last = family(self.server, x), 0
        try:
            for _ in range(self.max_requests):
                if self._stop.is_set():
                    break
                try:
                    v, y = next(gen)
                except Exception as exc:  # every failure is recorded and fails the test
                    self.errors.append(f"{name}: {exc!r}")
                    gen = family(self.server, x)
                    continue
                if not np.allclose(y, x + v):
                    self.errors.append(f"{name}: version {v} answered {np.asarray(y).tolist()}, expected x + {v}")
                if v < last:
                    self.errors.append(f"{name}: version went backwards {last} -> {v}")
                last = v
                self.seen[name].append(v)
        finally:
            gen.close()

    def count(self, version: int) -> int:
        return sum(s.count(version) for s in self.seen.values())

    def versions(self) -> set[int]:
        return {v for s in self.seen.values() for v in s}

    def __enter__(self) -> "FamilyClients":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)
