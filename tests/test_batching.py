"""Dynamic batching: TF Serving's parameters, batches that form and split correctly, padding,
a full queue answering UNAVAILABLE at once, and batches that never mix versions across swaps."""

import os
import re
import threading
import time

import httpx
import numpy as np
import pytest

from conftest import LoadClients, affine_version, wait_for, wait_state
from hotserve.batching.batcher import Batcher
from hotserve.batching.parameters import BatchingParameters, parse_batching_parameters
from hotserve.batching.parameters import BatchingConfigError
from hotserve.core.loaded import LoadedVersion
from hotserve.errors import Unavailable
from hotserve.examples import make_affine
from hotserve.observability import metrics
from hotserve.repository.publish import publish
from hotserve.runtimes.python import PythonServable
from hotserve.runtimes.registry import load_servable

PARAMS = """
max_batch_size { value: 32 }
batch_timeout_micros { value: 1000 }   # a comment
max_enqueued_batches { value: 4 }
num_batch_threads { value: 2 }
allowed_batch_sizes: 8
allowed_batch_sizes: 32
pad_variable_length_inputs: true
"""


def test_parse_tf_serving_batching_parameters():
    p = parse_batching_parameters(PARAMS)
    assert p == BatchingParameters(32, 1000, 4, 2, (8, 32), True)
    for text, fragment in [
        ("max_batch_size { value: 0 }", "must be >= 1"),
        ("max_batch_size { value: 8 }\nallowed_batch_sizes: 4", "must equal max_batch_size"),
        ("allowed_batch_sizes: 8\nallowed_batch_sizes: 4\nmax_batch_size { value: 4 }", "increase strictly"),
        ("max_batch_sise { value: 8 }", "unknown batching parameter 'max_batch_sise'"),
        ("max_batch_size { value: lots }", "invalid value"),
        ("max_batch_size = 8", "cannot read"),
    ]:
        with pytest.raises(BatchingConfigError, match=re.escape(fragment)):
            parse_batching_parameters(text)


def _python_servable(tmp_path, body: str):
    d = tmp_path / f"py{time.monotonic_ns()}"
    d.mkdir()
    (d / "model.py").write_text(
        "import numpy as np, time, os\nSEEN = []\n"
        "SIGNATURE = {'inputs': {'x': ('float32', [-1, 2])}, 'outputs': {'y': ('float32', [-1, 2])}}\n"
        f"def predict(inputs):\n    x = inputs['x']\n    SEEN.append(x.shape[0])\n{body}\n    return {{'y': x * 2}}\n")
    s = PythonServable(str(d))
    return s, s._module.SEEN


def _fire(batcher, lv, xs):
    results, errors = [None] * len(xs), []

    def go(i):
        try:
            results[i] = batcher.run(lv, {"x": xs[i]}, "serving_default")["y"]
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


def test_batches_form_and_every_request_gets_its_own_rows(tmp_path):
    servable = load_servable(os.path.dirname(make_affine(str(tmp_path / "a" / "model.onnx"), 5.0)))
    lv = LoadedVersion("batched", 1, servable)
    batcher = Batcher("batched", BatchingParameters(max_batch_size=64, batch_timeout_micros=500_000, num_batch_threads=1))
    before = metrics.BATCH_SIZE.count(("batched",))
    xs = [np.full((1 + i % 3, 4), float(i), np.float32) for i in range(24)]
    results, errors = _fire(batcher, lv, xs)
    batcher.stop()
    assert errors == []
    for x, y in zip(xs, results):
        np.testing.assert_array_equal(y, x + 5.0)
    batches = metrics.BATCH_SIZE.count(("batched",)) - before
    assert batches < len(xs)  # requests were merged (a 500 ms window for 24 concurrent requests)


def test_padding_to_allowed_batch_sizes_and_variable_lengths(tmp_path):
    servable, seen = _python_servable(tmp_path, "")
    lv = LoadedVersion("padded", 1, servable)
    batcher = Batcher("padded", BatchingParameters(max_batch_size=8, batch_timeout_micros=30_000, num_batch_threads=1,
                                                    allowed_batch_sizes=(4, 8)))
    xs = [np.full((1, 2), float(i), np.float32) for i in range(5)]
    results, errors = _fire(batcher, lv, xs)
    batcher.stop()
    assert errors == [] and all(n in (4, 8) for n in seen), seen
    for x, y in zip(xs, results):
        np.testing.assert_array_equal(y, x * 2)


def test_full_queue_answers_unavailable_at_once(tmp_path):
    gate = tmp_path / "gate"
    servable, _ = _python_servable(tmp_path, f"    while not os.path.exists({str(gate)!r}): time.sleep(0.01)")
    lv = LoadedVersion("full", 1, servable)
    batcher = Batcher("full", BatchingParameters(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1))
    out = {}
    running = threading.Thread(target=lambda: out.setdefault("a", batcher.run(lv, {"x": np.ones((1, 2), np.float32)}, "serving_default")))
    running.start()
    time.sleep(0.3)  # A now blocks the only batch thread
    queued = threading.Thread(target=lambda: out.setdefault("b", batcher.run(lv, {"x": np.ones((1, 2), np.float32)}, "serving_default")))
    queued.start()
    time.sleep(0.3)  # B waits in the queue: it is full
    t0 = time.monotonic()
    rejected = metrics.LIMIT_REJECTIONS.value(("full", "max_enqueued_batches"))
    with pytest.raises(Unavailable, match="batch queue is full"):
        batcher.run(lv, {"x": np.ones((1, 2), np.float32)}, "serving_default")
    assert time.monotonic() - t0 < 1.0  # refused at once, not after waiting
    assert metrics.LIMIT_REJECTIONS.value(("full", "max_enqueued_batches")) == rejected + 1
    gate.write_text("")
    running.join(10)
    queued.join(10)
    batcher.stop()
    assert set(out) == {"a", "b"}


def test_batching_across_swaps_never_mixes_versions(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 3000 }\nnum_batch_threads { value: 1 }\n")
    server = start_server(base, "--enable_batching", "--batching_parameters_file", str(params))
    assert "dynamic batching on (max_batch_size 16, batch_timeout_micros 3000" in server.log()
    with LoadClients(server.url, n=8) as clients:
        for v in range(2, 6):
            affine_version(base, v, build)
            wait_state(server, v, "AVAILABLE")
            wait_for(lambda: v in clients.versions, 20, f"version {v} to serve")
            clients.wait_requests(50)
    assert clients.errors == [], clients.errors[:5]  # each answer is x + the version in its header
    _, body = server.get("/metrics")
    count = float(re.search(rb':tensorflow:serving:batching_session:input_batch_size_count\{model="m"\} (\d+)', body).group(1))
    total = float(re.search(rb':tensorflow:serving:batching_session:input_batch_size_sum\{model="m"\} ([\d.]+)', body).group(1))
    assert total / count > 1.0  # batches held several requests on average


def _batch_queue(server) -> float:
    _, body = server.get("/metrics")
    m = re.search(rb'hotserve_batch_queue_depth\{model="slow"\} ([\d.]+)', body)
    return float(m.group(1)) if m else 0.0


def test_overloaded_batch_queue_gives_503_and_per_model_override(tmp_path, start_server):
    from conftest import python_version

    slow, fast, build = str(tmp_path / "slow"), str(tmp_path / "fast"), str(tmp_path / "build")
    gate, entered = str(tmp_path / "gate"), str(tmp_path / "entered")
    # A request whose first value is 999 holds the batch thread until the gate file exists: the
    # queue is full for certain while the others arrive, whatever the machine's load.
    python_version(slow, 1, build, gate=gate, entered=entered)
    affine_version(fast, 1, build)
    cfg = tmp_path / "models.yaml"
    cfg.write_text(
        f"model_config_list:\n"
        f"  - {{name: slow, base_path: {slow}, batching: {{max_batch_size: 1, max_enqueued_batches: 1, num_batch_threads: 1}}}}\n"
        f"  - {{name: fast, base_path: {fast}, batching: false}}\n")
    server = start_server(None, "--model_config_file", str(cfg), "--enable_batching")
    assert "model slow: dynamic batching on" in server.log() and "model fast: dynamic batching on" not in server.log()
    codes: list[int] = []

    def call(first: float = 1.0):
        r = httpx.post(server.url + "/v1/models/slow:predict", json={"instances": [[first, 1, 1, 1]]}, timeout=30)
        codes.append(r.status_code)
        if r.status_code == 503:
            assert "batch queue is full" in r.json()["error"]

    holder = threading.Thread(target=call, args=(999.0,))
    holder.start()
    wait_for(lambda: os.path.exists(entered), 20, "the first request to hold the batch thread")
    queued = threading.Thread(target=call)
    queued.start()
    wait_for(lambda: _batch_queue(server) >= 1, 20, "a batch to wait in the queue")
    refused = [threading.Thread(target=call) for _ in range(4)]
    for t in refused:
        t.start()
    for t in refused:
        t.join(30)
    open(gate, "w").close()
    threads = [holder, queued, *refused]
    for t in threads:
        t.join(30)
    assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
    assert set(codes) <= {200, 503}
    assert httpx.post(server.url + "/v1/models/fast:predict", json={"instances": [[1, 1, 1, 1]]}).status_code == 200
