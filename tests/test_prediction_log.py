"""The prediction log never blocks a request: a full queue drops and counts; the writer batches
into the store; flush() waits for what was queued; config carries the sampling rate."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from hotserve.core import config as cfg
from hotserve.learning.prediction_log import PredictionLog
from hotserve.observability import metrics


class _SlowStore:
    url = "memory://slow"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.written: list = []

    def log_predictions(self, batches) -> None:
        """Kept a request at a time (model, version, request_id), as the store would join them."""
        self.gate.wait(30)
        self.written.extend(SimpleNamespace(model=b.model, version=b.version, request_id=rid)
                            for b in batches for rid in b.request_ids)


def _call(i: int, model: str = "plog"):
    x = np.full((1, 2), i, np.float32)
    return SimpleNamespace(model=model, request_id=f"r{i}", inputs={"x": x}, outputs={"y": x})


def test_full_queue_drops_and_counts_without_blocking():
    store = _SlowStore()
    plog = PredictionLog(store, lambda m: 1.0, capacity=3).start()
    lv = SimpleNamespace(version=1)
    dropped0 = metrics.PREDICTION_LOG.value(("plog", "dropped"))
    plog(_call(0), lv, None, None)  # taken by the writer, which then blocks in the store
    plog._wake.set()
    deadline = time.monotonic() + 10
    while plog.depth and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    for i in range(1, 11):
        plog(_call(i), lv, None, None)
    assert time.perf_counter() - t0 < 1.0  # ten observer calls against a stuck store: no waiting
    assert metrics.PREDICTION_LOG.value(("plog", "dropped")) - dropped0 == 7  # 3 queued, 7 dropped
    assert not plog.flush(0.05)  # the store is stuck: flush gives up at its bound
    store.gate.set()
    assert plog.flush(10)
    assert [r.request_id for r in store.written] == ["r0", "r1", "r2", "r3"]
    assert metrics.PREDICTION_LOG.value(("plog", "logged")) >= 4
    plog.stop()


def test_sampling_rate_and_calls_without_tensors():
    store = _SlowStore()
    store.gate.set()
    rate = {"plog": 0.5}
    plog = PredictionLog(store, lambda m: rate.get(m, 0.0)).start()
    lv = SimpleNamespace(version=3)
    for i in range(400):
        plog(_call(i), lv, None, None)
    plog(_call(0, model="other"), lv, None, None)  # logging off for that model
    plog(SimpleNamespace(model="plog", request_id="c", inputs=None, outputs=None), lv, None, None)  # classify
    assert plog.flush(10)
    assert 120 < len(store.written) < 280 and {r.model for r in store.written} == {"plog"}
    assert store.written[0].version == 3 and plog.wants_id("plog") and not plog.wants_id("other")
    plog.stop()


def test_logging_config_in_text_proto_and_yaml():
    (m,) = cfg.parse_text_proto('model_config_list { config { name: "m" base_path: "/x" '
                                "logging_config { sampling_config { sampling_rate: 0.25 } } } }")
    assert m.logging_sampling_rate == 0.25
    (m,) = cfg.parse_yaml("model_config_list:\n- name: m\n  base_path: /x\n"
                          "  logging_config: {sampling_config: {sampling_rate: 1.0}}\n")
    assert m.logging_sampling_rate == 1.0
    (m,) = cfg.parse_yaml("model_config_list:\n- name: m\n  base_path: /x\n")
    assert m.logging_sampling_rate == 0.0
    with pytest.raises(cfg.ConfigError, match="from 0 to 1"):
        cfg.parse_yaml("model_config_list:\n- name: m\n  base_path: /x\n"
                       "  logging_config: {sampling_config: {sampling_rate: 2}}\n")
    with pytest.raises(cfg.ConfigError, match="sampling_config"):
        cfg.parse_yaml("model_config_list:\n- name: m\n  base_path: /x\n  logging_config: {rate: 1}\n")


def test_a_writer_batch_of_mixed_models_and_layouts_is_grouped():
    """Requests of two models, two versions and two input shapes queued together reach the store
    as batches of one model version and layout each, every request once, in order within each."""

    class _Batches:
        url = "memory://batches"

        def __init__(self) -> None:
            self.batches: list = []

        def log_predictions(self, batches) -> None:
            self.batches.extend(batches)

    store = _Batches()
    plog = PredictionLog(store, lambda m: 1.0)  # not started: everything queues, then one batch
    calls = []
    for i in range(60):
        model, version, width = ("a", 1, 2) if i % 3 == 0 else ("b", 1 + i % 2, 2 if i % 4 else 3)
        x = np.full((1, width), i, np.float32)
        call = SimpleNamespace(model=model, request_id=f"r{i}", inputs={"x": x}, outputs={"y": x[:, :1]})
        plog(call, SimpleNamespace(version=version), None, None)
        calls.append((model, version, width, f"r{i}"))
    plog.start()
    assert plog.flush(10)
    plog.stop()
    seen = []
    for b in store.batches:
        shapes = {a.shape for a in b.inputs["x"]}
        assert len(shapes) == 1 and len(b.outputs["y"]) == len(b)
        for k, rid in enumerate(b.request_ids):
            i = int(rid[1:])
            assert (b.model, b.version, b.inputs["x"][k].shape[1]) == calls[i][:3] and b.inputs["x"][k][0, 0] == i
            seen.append(i)
        assert b.request_ids == sorted(b.request_ids, key=lambda r: int(r[1:]))
    assert sorted(seen) == list(range(60))
    # A batch of one model version and layout, the usual case, is one store batch.
    store.batches.clear()
    plog = PredictionLog(store, lambda m: 1.0)
    for i in range(10):
        plog(_call(i), SimpleNamespace(version=1), None, None)
    plog.start()
    assert plog.flush(10)
    plog.stop()
    assert [b.request_ids for b in store.batches] == [[f"r{i}" for i in range(10)]]


def test_a_record_that_cannot_be_grouped_is_counted_and_the_writer_goes_on():
    """A runtime that broke its contract (an output that is not an array) costs its own record,
    counted as failed; the writer stays up and logs what comes next."""

    class _Batches:
        url = "memory://batches"

        def __init__(self) -> None:
            self.ids: list = []

        def log_predictions(self, batches) -> None:
            self.ids.extend(rid for b in batches for rid in b.request_ids)

    store = _Batches()
    plog = PredictionLog(store, lambda m: 1.0).start()
    failed0 = metrics.PREDICTION_LOG.value(("plog", "failed"))
    lv = SimpleNamespace(version=1)
    plog(_call(0), lv, None, None)
    plog(SimpleNamespace(model="plog", request_id="bad", inputs={"x": np.zeros((1, 2), np.float32)},
                         outputs={"y": [1.0, 2.0]}), lv, None, None)
    assert plog.flush(10)
    plog(_call(1), lv, None, None)
    assert plog.flush(10)
    plog.stop()
    assert store.ids == ["r0", "r1"]
    assert metrics.PREDICTION_LOG.value(("plog", "failed")) - failed0 == 1


class _Recording:
    url = "memory://recording"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.wrote = threading.Event()

    def log_predictions(self, batches) -> None:
        self.batches.extend(list(b.request_ids) for b in batches)
        self.wrote.set()


def test_a_burst_ends_the_linger(monkeypatch):
    """The writer gathers for a while after the first request, but a quarter of the queue's
    capacity waiting writes at once: a burst cannot fill the queue during the linger."""
    import hotserve.learning.prediction_log as pl

    monkeypatch.setattr(pl, "_LINGER", 120.0)  # longer than the test's bound: only the burst can end it
    store = _Recording()
    plog = PredictionLog(store, lambda m: 1.0, capacity=40).start()
    lv = SimpleNamespace(version=1)
    try:
        for i in range(9):  # the first wakes the writer, which lingers; the tenth would be the quarter
            plog(_call(i), lv, None, None)
        assert not store.wrote.wait(0.3) and plog.depth == 9
        for i in range(9, 12):
            plog(_call(i), lv, None, None)
        assert store.wrote.wait(30)
        assert store.batches[0][:10] == [f"r{i}" for i in range(10)]
    finally:
        plog.stop()
