"""In-process tests of the live-parameter parts: table overlays and folds, copy-on-write
states, undo composition, validation, the delta log, the keeper's revisions and rollback, and
what the scanner does with delta logs (nothing costly)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from hotserve.core.loaded import LoadedVersion
from hotserve.core.parameters import Conflict, ParameterKeeper
from hotserve.errors import HotserveError, InvalidArgument, NotFound
from hotserve.examples import make_embedding_model
from hotserve.observability.events import EventBus
from hotserve.repository.deltas import DeltaLog, chain_to, decode_updates, encode_updates
from hotserve.repository.publish import publish
from hotserve.repository.scanner import VersionScanner
from hotserve.repository.storage import LocalStorage
from hotserve.runtimes.onnx import OnnxServable
from hotserve.runtimes.parameters import (ParamSpec, ParamState, TableStore, TableView, Update, apply, compose_undo,
                                          validate)


def test_table_overlay_take_and_fold_keep_every_view_consistent():
    base = np.arange(40, dtype=np.float32).reshape(10, 4)
    store = TableStore(base.copy())
    v0 = TableView(store)
    v1 = v0.with_rows(np.array([7, 2]), np.full((2, 4), -1, np.float32))
    v2 = v1.with_rows(np.array([2, 5]), np.full((2, 4), -2, np.float32))
    ids = np.array([[2, 5], [7, -1]])  # any shape, negative counts from the end
    np.testing.assert_array_equal(v0.take(ids), base[ids])
    want = base.copy()
    want[[7, 2]] = -1
    np.testing.assert_array_equal(v1.take(ids), want[ids])
    want[[2, 5]] = -2
    np.testing.assert_array_equal(v2.take(ids), want[ids])
    assert v2.overlay_rows == 3 and v0.overlay_rows == 0
    folded = store.fold(v2)  # only once v0 and v1 are no longer read
    assert folded.overlay_rows == 0
    np.testing.assert_array_equal(folded.take(ids), want[ids])
    np.testing.assert_array_equal(v2.take(ids), want[ids])  # a request still on v2 sees the same values
    np.testing.assert_array_equal(folded.materialize(), want)
    with pytest.raises(InvalidArgument, match="out of range for a table of 10 rows"):
        v2.take(np.array([10]))


def test_apply_shares_untouched_tensors_and_undo_composes_back():
    w = np.ones((3, 2), np.float32)
    w.flags.writeable = False
    state = ParamState({"w": w, "t": TableView(TableStore(np.zeros((5, 2), np.float32)))})
    u1 = [Update("t", np.full((2, 2), 1, np.float32), np.array([1, 3]))]
    t1, undo1 = apply(state, u1)
    assert t1["w"] is w  # untouched: shared, not copied
    s1 = ParamState(t1)
    t2, undo2 = apply(s1, [Update("t", np.full((1, 2), 2, np.float32), np.array([3])),
                           Update("w", np.zeros((3, 2), np.float32))])
    s2 = ParamState(t2)
    assert s2.rows_of("t", np.array([1, 3])).tolist() == [[1, 1], [2, 2]] and not s2.value("w").any()
    with pytest.raises(ValueError):
        s2.tensors["w"][0, 0] = 5  # states are immutable
    back = compose_undo([undo2, undo1])  # newest first -> revision 0
    t0, _ = apply(s2, back)
    s0 = ParamState(t0)
    assert not s0.value("t").any() and (s0.value("w") == 1).all()
    back1 = compose_undo([undo2])  # -> revision 1
    s1b = ParamState(apply(s2, back1)[0])
    np.testing.assert_array_equal(s1b.value("t"), s1.value("t"))


def test_validate_refuses_the_whole_delta_for_one_bad_update():
    specs = {"t": ParamSpec("t", np.dtype(np.float32), (5, 2), "table"), "b": ParamSpec("b", np.dtype(np.float32), (2,))}
    ok = Update("t", np.zeros((1, 2)), np.array([4]))
    assert validate(specs, [ok])[0].values.dtype == np.float32
    for bad, err, msg in [
        (Update("x", np.zeros(2)), NotFound, "unknown tensor 'x'"),
        (Update("b", np.zeros(3)), InvalidArgument, "expected [2]"),
        (Update("t", np.zeros((1, 2)), np.array([5])), InvalidArgument, "out of range"),
        (Update("t", np.zeros((1, 2)), np.array([-1])), InvalidArgument, "out of range"),
        (Update("t", np.zeros((2, 2)), np.array([1, 1])), InvalidArgument, "more than once"),
        (Update("t", np.zeros((1, 3)), np.array([1])), InvalidArgument, "expected [1, 2]"),
        (Update("b", np.array(["a", "b"])), InvalidArgument, "dtype"),
        (Update("b", np.zeros((2,)), np.array([0])), InvalidArgument, "expected [1]"),
    ]:
        good = Update("b", np.zeros(2)) if bad.name == "t" else ok
        with pytest.raises(err, match=msg.replace("[", r"\[").replace("]", r"\]")):
            validate(specs, [good, bad])
    with pytest.raises(InvalidArgument, match="twice"):
        validate(specs, [ok, ok])
    with pytest.raises(InvalidArgument, match="no updates"):
        validate(specs, [])


def test_safetensors_round_trip_and_chain_resolution(tmp_path):
    ups = [Update("a.b", np.ones((2, 3), np.float32)), Update("t", np.zeros((2, 4), np.float16), np.array([1, 9]))]
    back = {n: (v, r) for n, v, r in decode_updates(encode_updates(ups))}
    assert back["a.b"][1] is None and back["a.b"][0].shape == (2, 3)
    assert back["t"][1].tolist() == [1, 9] and back["t"][0].dtype == np.float16
    log = DeltaLog(LocalStorage(), str(tmp_path / "7"))
    assert log.commits() == []
    e1 = log.append(1, "delta", 1, 0, encode_updates(ups[:1]))
    assert log.append(1, "delta", 1, 0, encode_updates(ups[:1])) is None  # seq 1 is taken: nothing written twice
    log.append(2, "delta", 2, 1, encode_updates(ups[:1]))
    log.append(3, "rollback", 1, 2)
    log.append(4, "delta", 3, 1, encode_updates(ups[:1]))
    entries = log.entries_after(0)
    assert [e.seq for e in entries] == [1, 2, 3, 4] and entries[0] == e1
    target, chain = chain_to(entries)
    assert target == 3 and [e.revision for e in chain] == [1, 3]  # revision 2 was abandoned by the rollback
    assert len([n for n in os.listdir(log.dir) if n.endswith(".safetensors")]) == 3


def _keeper(tmp_path, bus=None):
    base = str(tmp_path / "m")
    src = make_embedding_model(str(tmp_path / "b" / "model.onnx"), rows=50, dim=4, dense=2)
    _, path = publish(src, base, 1)
    servable = OnnxServable(path, 1, 1)
    keeper = ParameterKeeper("m", 1, servable, LocalStorage(), path, bus or EventBus(), keep=3)
    keeper.replay()
    lv = LoadedVersion("m", 1, servable, keeper.revision, keeper.view(), keeper.state)
    keeper.attach(lv)
    return keeper, lv, path


def _score(lv, item: int) -> float:
    b = lv.try_acquire()
    try:
        return float(b.servable.predict({"item": np.array([item]), "dense": np.zeros((1, 2), np.float32)})["score"][0, 0])
    finally:
        b.release()


def test_keeper_revisions_bind_requests_fold_and_roll_back(tmp_path):
    keeper, lv, path = _keeper(tmp_path)
    s0 = _score(lv, 3)
    base_scores = [_score(lv, i) for i in (10, 11, 12, 13)]
    held = lv.try_acquire()  # a request in flight on revision 0
    r1 = keeper.apply([("item_embedding", np.ones((1, 4), np.float32), np.array([3]))])
    assert r1.revision == 1 and lv.head.revision == 1 and held.revision == 0
    s1 = _score(lv, 3)
    assert s1 != s0
    assert float(held.servable.predict({"item": np.array([3]), "dense": np.zeros((1, 2), np.float32)})["score"][0, 0]) == s0
    assert keeper.state.overlay_rows() == 1  # not folded while revision 0 is read
    done = threading.Event()
    keeper.bus.subscribe(lambda rec: None)
    held.release()  # the last reader of revision 0: the fold runs
    for _ in range(200):
        if keeper.state.overlay_rows() == 0:
            done.set()
            break
        threading.Event().wait(0.01)
    assert done.is_set() and _score(lv, 3) == s1 and lv.head.revision == 1
    with pytest.raises(Conflict):
        keeper.apply([("head.bias", np.array([1.0], np.float32), None)], expect_revision=0)
    for i in range(4):  # revisions 2..5; keep=3: undo kept for the newest three
        keeper.apply([("item_embedding", np.full((1, 4), float(i), np.float32), np.array([10 + i]))])
    assert lv.head.revision == 5
    scores5 = [_score(lv, i) for i in (3, 10, 11, 12, 13)]
    keeper.rollback(1)  # further back than the 3 kept revisions: rebuilt from the version's file and the log
    assert lv.head.revision == 1 and [_score(lv, i) for i in (3, 10, 11, 12, 13)] == [s1, *base_scores]
    keeper.rollback(0)
    assert [_score(lv, i) for i in (3, 10, 11, 12, 13)] == [s0, *base_scores]
    keeper.rollback(5)
    assert [_score(lv, i) for i in (3, 10, 11, 12, 13)] == scores5
    keeper.rollback(2)
    assert lv.head.revision == 2 and _score(lv, 3) == s1
    keeper.rollback(5)  # forward: replayed from the log
    assert lv.head.revision == 5
    r = keeper.apply([("head.bias", np.array([3.0], np.float32), None)], expect_revision=5)
    assert r.revision == 6
    # A second process (a worker) reading the same log converges to the same revision and values.
    other, lv2, _ = _keeper_from(path, tmp_path)
    assert lv2.head.revision == 6 and _score(lv2, 3) == _score(lv, 3) and _score(lv2, 12) == _score(lv, 12)
    keeper.rollback(4)
    assert other.catch_up() == 1 and lv2.head.revision == 4 and _score(lv2, 13) == _score(lv, 13)


def _keeper_from(path, tmp_path):
    servable = OnnxServable(path, 1, 1)
    keeper = ParameterKeeper("m", 1, servable, LocalStorage(), path, EventBus(), keep=3)
    keeper.replay()
    lv = LoadedVersion("m", 1, servable, keeper.revision, keeper.view(), keeper.state)
    keeper.attach(lv)
    return keeper, lv, path


class _Counting(LocalStorage):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def stat(self, path):
        self.calls.append(("stat", path))
        return super().stat(path)

    def stat_files(self, path):
        self.calls.append(("stat_files", path))
        return super().stat_files(path)

    def read_bytes(self, path):
        self.calls.append(("read", path))
        return super().read_bytes(path)


def test_the_scanner_keeps_deltas_out_of_the_fingerprint_and_polls_cheaply(tmp_path):
    keeper, lv, path = _keeper(tmp_path)
    storage = _Counting()
    scanner = VersionScanner(storage, str(tmp_path / "m"), 0.0, "m")
    first = scanner.scan(now=1.0)
    fp = first.complete[1].fingerprint
    for i in range(20):
        keeper.apply([("item_embedding", np.ones((1, 4), np.float32), np.array([i]))])
    storage.calls.clear()
    second = scanner.scan(now=2.0)  # polling: the deltas dir's stamp changed -> one listing, no reads of deltas
    assert second.complete[1].fingerprint == fp and second.complete[1].deltas == 20
    assert second.key() == first.key() and second.delta_key() != first.delta_key()
    assert not [c for c in storage.calls if c[0] == "read" and "deltas" in c[1]]
    storage.calls.clear()
    third = scanner.scan(now=3.0)  # nothing changed: three stats for a version with a delta log
    assert third.complete[1].deltas == 20
    assert [c[0] for c in storage.calls if "/1" in c[1]] == ["stat", "stat", "stat"]


def test_a_python_models_update_parameters_hook_builds_the_next_state(tmp_path):
    from hotserve.runtimes.python import PythonServable

    (tmp_path / "model.py").write_text(
        "import numpy as np\n"
        "SIGNATURE = {'inputs': {'x': ('float32', [-1, 2])}, 'outputs': {'y': ('float32', [-1, 2])}}\n"
        "PARAMETERS = {'w': np.ones(2, np.float32), 'w2': np.full(2, 2, np.float32)}\n"
        "def predict(inputs, params):\n"
        "    return {'y': inputs['x'] * params['w2']}\n"
        "def update_parameters(params, updates):\n"
        "    out = dict(params)\n"
        "    for u in updates:\n"
        "        out[u.name] = np.array(u.values, np.float32)\n"
        "    out['w2'] = out['w'] * 2  # a derived tensor the model keeps in step\n"
        "    return out\n")
    py = PythonServable(str(tmp_path))
    keeper = ParameterKeeper("p", 1, py, LocalStorage(), str(tmp_path), EventBus())
    lv = LoadedVersion("p", 1, py, 0, keeper.view(), keeper.state)
    keeper.attach(lv)
    held = lv.try_acquire()
    keeper.apply([("w", np.full(2, 5, np.float32), None)])
    b = lv.try_acquire()
    x = {"x": np.ones((1, 2), np.float32)}
    assert b.servable.predict(x)["y"].tolist() == [[10.0, 10.0]] and b.revision == 1
    assert held.servable.predict(x)["y"].tolist() == [[2.0, 2.0]] and held.revision == 0
    b.release()
    held.release()
    keeper.rollback(0)
    b = lv.try_acquire()
    assert b.servable.predict(x)["y"].tolist() == [[2.0, 2.0]]
    b.release()


def test_onnx_proto_reads_floats_as_onnx_does_in_every_encoding(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from hotserve.runtimes import onnx_proto

    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float16, np.float64):
        arr = rng.standard_normal((3, 5)).astype(dtype)
        raw = numpy_helper.from_array(arr, "w")
        typed = helper.make_tensor("w", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), arr.shape,
                                   arr.flatten().tolist(), raw=False)
        for tensor in (raw, typed):
            got = onnx_proto.float_array(tensor)
            np.testing.assert_array_equal(got, numpy_helper.to_array(tensor))
            assert got.flags.writeable and got.dtype == dtype
    assert onnx_proto.float_dtype(TensorProto.INT64) is None
    assert onnx_proto.float_type(np.dtype(np.float16)) == TensorProto.FLOAT16


def test_onnx_proto_loads_graphs_with_external_data_through_onnx(tmp_path):
    import onnx

    from hotserve.runtimes import onnx_proto

    path = make_embedding_model(str(tmp_path / "m" / "model.onnx"), rows=50, dim=4, seed=1)
    model = onnx.load(path)
    want = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer
            if onnx_proto.float_dtype(t.data_type) is not None}
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
              location="weights.bin", size_threshold=0)
    got = {t.name: onnx_proto.float_array(t) for t in onnx_proto.load_model(str(tmp_path / "ext.onnx")).graph.initializer
           if onnx_proto.float_dtype(t.data_type) is not None}
    assert got.keys() == want.keys() and got
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_loading_a_version_does_not_import_the_onnx_package(tmp_path):
    """`import onnx` costs ~12 MiB per worker; the load path reads the graph with the protobuf
    classes alone (runtimes/onnx_proto.py)."""
    import subprocess
    import sys

    path = make_embedding_model(str(tmp_path / "m" / "model.onnx"), rows=50, dim=4, seed=1)
    code = ("import sys; from hotserve.runtimes.onnx import OnnxServable; s = OnnxServable(sys.argv[1]); "
            "assert s.param_specs and not s.not_updatable, s.not_updatable; "
            "print(sorted(m for m in sys.modules if m == 'onnx' or m.startswith('onnx.')))")
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['onnx.onnx_ml_pb2']"
