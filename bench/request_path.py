#!/usr/bin/env python3
"""What one REST predict costs inside hotserve, without sockets: the HTTP parser, the routing,
the request frame, decode, inference and encode, measured in process on one core, against the
bare minimum a hand-written app does for the same request (orjson.loads, np.asarray,
session.run, orjson.dumps of .tolist()) on the same session settings.

    python bench/request_path.py [--seconds 3] [--profile] [--batch 32] [--prediction-log [--ab-rounds 12]]

It prints microseconds per request for each stage and the overhead ratio. `--profile` runs
cProfile over the hotserve path and prints the top functions (cumulative). Single-threaded and
socket-free, so it is steadier than a load test on a shared machine, but it leaves out what
the kernel and the network stack cost (the same for every server).

With `--prediction-log` it also measures what logging costs in this one process: the model's
sampling rate switched between 0 and 1.0 in alternating 1 s blocks (the writer thread running
throughout), microseconds a request of wall time and of CPU for each, and the CPU of each
thread. Alternating blocks seconds apart share the machine's drift, which a comparison of two
runs does not; the figure tracks the load test's (bench/learning.py) within ~1-2 us.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import numpy as np
import orjson

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import procs  # noqa: E402


def _per_request(fn, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        n += 200
        if time.perf_counter() - t0 >= seconds:
            return (time.perf_counter() - t0) / n * 1e6


def _grpc_path(ctx, loop, x: list):
    """One TF Serving Predict through the native gRPC front end (server/grpc_h2.py) on a
    connection fed in process: HEADERS + DATA in, HEADERS + DATA + trailers out. The client's
    header block is encoded once (a real client repeats the same indexed block)."""
    import struct

    from hpack import Encoder

    from hotserve.protos.tensors import from_numpy
    from hotserve.protos.tensorflow_serving.apis import predict_pb2
    from hotserve.server import grpc_h2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "mlp"
    from_numpy(np.asarray(x, np.float32), out=req.inputs["x"])
    msg = req.SerializeToString()
    body = struct.pack(">BI", 0, len(msg)) + msg

    async def make():
        return grpc_h2.H2GrpcServer(ctx, "127.0.0.1", 0)

    server = loop.run_until_complete(make())
    out: list[bytes] = []

    class _Transport:
        def write(self, data: bytes) -> None:
            out.append(data)

        def close(self) -> None:
            pass

    conn = grpc_h2._Connection(server)
    conn.connection_made(_Transport())
    conn.data_received(grpc_h2.PREFACE + grpc_h2._frame(grpc_h2.SETTINGS, 0, 0)
                       + grpc_h2._frame(grpc_h2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1 - 65_535)))
    enc = Encoder()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/tensorflow.serving.PredictionService/Predict"),
               (":authority", "bench"), ("content-type", "application/grpc"), ("te", "trailers")]
    blocks = [enc.encode(headers), enc.encode(headers)]  # the first adds the fields to the table, the next index them
    sid = [1]

    def ended() -> bool:
        data = b"".join(out)
        while len(data) >= 9:
            if data[3] == grpc_h2.HEADERS and data[4] & grpc_h2.END_STREAM:
                return True
            data = data[9 + int.from_bytes(data[:3], "big"):]
        return False

    def call() -> bytes:
        s = sid[0]
        sid[0] += 2
        conn.data_received(grpc_h2._frame(grpc_h2.HEADERS, grpc_h2.END_HEADERS, s, blocks[s > 1])
                           + grpc_h2._frame(grpc_h2.DATA, grpc_h2.END_STREAM, s, body))
        while not ended() and not conn.closed:  # answered in data_received when the model runs inline
            loop.run_until_complete(asyncio.sleep(0))
        answer = b"".join(out)
        out.clear()
        return answer

    out.clear()
    first = call()
    assert first[9 + int.from_bytes(first[:3], "big") + 3] == grpc_h2.DATA, "the Predict call failed"
    return call


def _logging_ab(mm, serve_one, rounds: int, block: float = 1.0) -> None:
    """Logging off and on in alternating blocks (the order swapped every round), one process."""
    import dataclasses
    import statistics
    import threading

    wall: dict[float, list[float]] = {0.0: [], 1.0: []}
    cpu: dict[float, list[float]] = {0.0: [], 1.0: []}
    per_thread: dict[tuple[float, int], float] = {}
    base = mm.intent.config
    main_tid = threading.get_native_id()
    for i in range(rounds):
        for rate in ((0.0, 1.0) if i % 2 == 0 else (1.0, 0.0)):
            # The rate is read per request; set_config() would also rewrite the routing intent each block.
            mm.intent.config = dataclasses.replace(base, logging_sampling_rate=rate)
            for _ in range(300):
                serve_one()  # the other setting's queue drains; caches settle
            c0, th0, n, t0 = time.process_time(), procs.thread_cpu(os.getpid()), 0, time.perf_counter()
            while time.perf_counter() - t0 < block:
                for _ in range(200):
                    serve_one()
                n += 200
            wall[rate].append((time.perf_counter() - t0) / n * 1e6)
            cpu[rate].append((time.process_time() - c0) / n * 1e6)
            for tid, seconds in procs.thread_cpu(os.getpid()).items():
                key = (rate, tid)
                per_thread[key] = per_thread.get(key, 0.0) + (seconds - th0.get(tid, 0.0)) / n * 1e6 / rounds
    mm.intent.config = base
    off_w, on_w = statistics.median(wall[0.0]), statistics.median(wall[1.0])
    off_c, on_c = statistics.median(cpu[0.0]), statistics.median(cpu[1.0])
    print(f"\nprediction log, same process, {rounds} pairs of {block:g} s blocks (medians, us/request):")
    print(f"{'':<28} {'wall':>8} {'CPU':>8}")
    print(f"{'logging off':<28} {off_w:>8.1f} {off_c:>8.1f}")
    print(f"{'logging on (rate 1.0)':<28} {on_w:>8.1f} {on_c:>8.1f}")
    print(f"{'difference':<28} {on_w - off_w:>+8.1f} {on_c - off_c:>+8.1f}")
    print("difference per pair (wall):", " ".join(f"{b - a:+.1f}" for a, b in zip(wall[0.0], wall[1.0])))
    names = {t.native_id: t.name for t in threading.enumerate()}
    for tid in sorted({t for _, t in per_thread}):
        off_t, on_t = per_thread.get((0.0, tid), 0.0), per_thread.get((1.0, tid), 0.0)
        if max(off_t, on_t) >= 0.05:
            name = "serving (this) thread" if tid == main_tid else names.get(tid, f"thread {tid}")
            print(f"  {name:<26} off {off_t:6.2f}  on {on_t:6.2f} us/request (CPU, mean)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    p.add_argument("--prediction-log", dest="prediction_log", action="store_true",
                   help="log every request (a SQLite feedback store in a temporary --learning_dir, sampling rate 1.0), "
                        "then measure logging on against off in alternating blocks")
    p.add_argument("--ab-rounds", dest="ab_rounds", type=int, default=12,
                   help="with --prediction-log: pairs of 1 s blocks, logging off and on (default 12)")
    args = p.parse_args(argv)

    import onnxruntime as ort

    from hotserve.core.config import ModelConfig
    from hotserve.core.manager import Manager, ManagerOptions
    from hotserve.examples import make_mlp
    from hotserve.protocols import tfserving_rest
    from hotserve.repository.publish import publish
    from hotserve.runtimes.registry import RuntimeOptions
    from hotserve.server.context import build_context
    from hotserve.server.http import HttpProtocol, Limits
    from hotserve.server.rest import RestApp
    from concurrent.futures import ThreadPoolExecutor

    work = tempfile.mkdtemp(prefix="hotserve-path-")
    model = make_mlp(os.path.join(work, "src", "model.onnx"), seed=1)
    base = os.path.join(work, "models", "mlp")
    publish(model, base, 1)
    x = [[float((i + r) % 7) / 7 for i in range(784)] for r in range(args.batch)]
    body = orjson.dumps({"instances": x})
    raw = (b"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    # The hand-written minimum.
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def lean() -> bytes:
        doc = orjson.loads(body)
        y = sess.run(None, {name: np.asarray(doc["instances"], dtype=np.float32)})[0]
        return orjson.dumps({"predictions": y.tolist()})

    def infer_only() -> None:
        sess.run(None, {name: np.asarray(x, dtype=np.float32)})

    mopts = ManagerOptions(runtime=RuntimeOptions(1, 1), inline_max_us=300.0, use_inotify=False)
    rate = 1.0 if args.prediction_log else 0.0
    manager = Manager([ModelConfig("mlp", base, logging_sampling_rate=rate)], mopts, decoder=tfserving_rest)
    manager.start()
    deadline = time.monotonic() + 30
    while not manager.ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    mm = manager.models["mlp"]
    ctx = build_context(manager, ThreadPoolExecutor(2))
    app = RestApp(ctx)
    learning = None
    if args.prediction_log:
        from hotserve.learning.service import LearningService
        from hotserve.learning.stores import open_store

        learning = LearningService(manager, open_store(os.path.join(work, "learning"))).start()
        ctx.frame.observers.append(learning.log)
        ctx.frame.wants_id = learning.log.wants_id

    class _Transport:
        def __init__(self) -> None:
            self.out = []

        def write(self, data: bytes) -> None:
            self.out.append(data)

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def close(self) -> None:
            pass

    try:
        import uvloop

        loop = uvloop.new_event_loop()  # what the server runs on
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    async def make() -> HttpProtocol:
        return HttpProtocol(app, Limits(), lambda status, msg: b"")

    proto = loop.run_until_complete(make())
    transport = _Transport()
    proto.connection_made(transport)

    def hotserve_http() -> None:
        proto.data_received(raw)
        while not transport.out:  # answered in data_received when the model runs inline
            loop.run_until_complete(asyncio.sleep(0))
        transport.out.clear()

    from hotserve.server.http import Request

    def hotserve_app() -> None:
        req = Request("POST", "/v1/models/mlp:predict", b"", [(b"content-type", b"application/json")], body, True)
        if app.fast(req) is None:  # larger than what runs inline: the async path, as the server takes it
            loop.run_until_complete(app(req))

    check = lean()
    # --inference_threading=auto runs the model inline once it measured enough cheap inferences
    # (core/inline.py; re-decided every 0.25 s): serve until it does, as a server under load would.
    deadline = time.monotonic() + 30
    while not mm.inline_ok and time.monotonic() < deadline:
        hotserve_http()
    assert mm.inline_ok, "the model never qualified to run inline"
    first = Request("POST", "/v1/models/mlp:predict", b"", [(b"content-type", b"application/json")], body, True)
    first = app.fast(first) or loop.run_until_complete(app(first))
    assert first.status == 200, first.body[:200]
    hotserve_http()
    proto.data_received(raw)
    while proto.task is not None or not transport.out:
        loop.run_until_complete(asyncio.sleep(0))
    answer = b"".join(transport.out)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    got = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["predictions"]
    assert np.allclose(got, orjson.loads(check)["predictions"], atol=1e-5)
    transport.out.clear()

    grpc_call = _grpc_path(ctx, loop, x)

    rows = [
        ("onnxruntime session.run alone", _per_request(infer_only, args.seconds)),
        ("hand-written minimum (loads, asarray, run, dumps)", _per_request(lean, args.seconds)),
        ("hotserve app (routing + frame + codec + run)", _per_request(hotserve_app, args.seconds)),
        ("hotserve HTTP protocol + app", _per_request(hotserve_http, args.seconds)),
        ("hotserve gRPC: HTTP/2 + app (TF Serving Predict)", _per_request(grpc_call, args.seconds)),
    ]
    base_us = rows[1][1]
    print(f"{'path':<52} {'us/request':>11} {'vs minimum':>11}")
    for label, us in rows:
        print(f"{label:<52} {us:>11.1f} {us / base_us:>10.2f}x")
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(3000):
            hotserve_http()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    if learning is not None:
        _logging_ab(mm, hotserve_http, args.ab_rounds)
        learning.stop()
    manager.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
