"""In-process unit tests of the pure and small parts: router, canary analysis, policies, memory
budget, event bus, routing store, and one model manager driven end to end in this process (a
Python-runtime model on disk, no server process, waiting on bus events, not sleeping)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hotserve.core import canary, control
from hotserve.core.config import CanaryConfig, ModelConfig
from hotserve.core.gates import GatePipeline, standard_gates
from hotserve.core.loaded import LoadedVersion
from hotserve.core.memory import MemoryBudget, parse_size
from hotserve.core.model_manager import ManagerOptions, ModelManager
from hotserve.core.planner import TableSpec
from hotserve.core.policy import All, Latest, Specific
from hotserve.core.router import Route, RouteTable
from hotserve.errors import NotFound, Unavailable
from hotserve.observability.events import EventBus, GateResult, LoadFailed, Notice, Swapped
from hotserve.repository.publish import publish
from hotserve.repository.routing_store import FileRoutingStore, RoutingState, update
from hotserve.repository.storage import LocalStorage


class FakeServable:
    runtime = "python"
    signatures: dict = {}

    def __init__(self) -> None:
        self.unloaded = False

    def predict(self, inputs, signature_name="serving_default"):
        return {}

    def unload(self) -> None:
        self.unloaded = True


def lv(version: int) -> LoadedVersion:
    return LoadedVersion("m", version, FakeServable())


# -- router ----------------------------------------------------------------------------------
def test_route_table_from_spec_and_pick():
    loaded = {1: lv(1), 2: lv(2)}
    t = RouteTable.from_spec(TableSpec(frozenset({1, 2}), 1, {"stable": 1, "canary": 2}, 2, 50.0), loaded)
    assert t.pick("m", 2) is loaded[2]
    assert t.pick("m", None, "stable") is loaded[1]
    assert t.spec() == TableSpec(frozenset({1, 2}), 1, {"stable": 1, "canary": 2}, 2, 50.0)
    with pytest.raises(NotFound, match="versions being served: 1, 2"):
        t.pick("m", 7)
    with pytest.raises(NotFound, match="labels: canary=2, stable=1"):
        t.pick("m", None, "beta")
    # A sticky key always lands on the same side; over many keys the split is near the weight.
    sides = {t.pick("m", None, None, f"user-{i}").version for i in range(1)}
    assert all(t.pick("m", None, None, "user-0").version in sides for _ in range(20))
    share = sum(t.pick("m", None, None, f"user-{i}").version == 2 for i in range(4000)) / 4000
    assert 0.45 < share < 0.55


def test_route_acquire_skips_retired_and_reports_empty():
    route = Route("m")
    with pytest.raises(Unavailable, match="no version loaded yet"):
        route.acquire()
    old, new = lv(1), lv(2)
    route.table = RouteTable({1: old}, old)
    got = route.acquire()  # a handle on (version 1, its current revision)
    assert got.lv is old and got.revision == 0 and old.in_flight == 1
    old.retire()
    assert not old.wait_drained(0)  # still in flight
    route.table = RouteTable({2: new}, new)
    assert route.acquire().lv is new
    got.release()
    assert old.wait_drained(0)


# -- canary analysis ---------------------------------------------------------------------------
def _events(n: int, ok: bool = True, seconds: float = 0.001, t: float = 0.0):
    return [(t, ok, seconds)] * n


def test_canary_analysis_decisions():
    cfg = CanaryConfig(window_seconds=10, min_requests=20, max_error_rate_increase=0.05, max_latency_ratio=2.0)
    assert canary.analyze(cfg, 0, 1, _events(100), _events(5)).decision == "wait"
    bad = _events(15) + _events(5, ok=False)
    v = canary.analyze(cfg, 0, 1, _events(100), bad)
    assert v.decision == "rollback" and "error rate 25.00%" in v.reason
    slow = canary.analyze(cfg, 0, 1, _events(100), _events(30, seconds=0.01))
    assert slow.decision == "rollback" and "p99" in slow.reason
    assert canary.analyze(cfg, 0, 5, _events(100), _events(30)).decision == "wait"
    assert canary.analyze(cfg, 0, 11, _events(100), _events(30)).decision == "promote"


# -- policies and memory -----------------------------------------------------------------------
def test_policies():
    assert Latest(2).select([1, 5, 3]) == {5, 3}
    assert All().select([1, 2]) == {1, 2}
    assert Specific(frozenset({2, 9})).select([1, 2, 3]) == {2}
    with pytest.raises(ValueError):
        Latest(0)


def test_memory_budget_books():
    b = MemoryBudget(100)
    assert b.try_reserve(("m", 1), 60)
    assert not b.try_reserve(("m", 2), 60)
    released = threading.Timer(0.05, b.release, args=(("m", 1),))
    released.start()
    assert b.wait_reserve(("m", 2), 60, 5.0)  # wakes when the first is released
    b.commit(("m", 2), 30)
    assert b.used() == 30
    assert parse_size("2GiB") == 2 << 30 and parse_size("500MB") == 500_000_000
    with pytest.raises(ValueError, match="expected a number"):
        parse_size("lots")


# -- event bus ---------------------------------------------------------------------------------
def test_event_bus_orders_filters_and_waits():
    bus = EventBus(capacity=3)
    seen = []
    bus.subscribe(lambda r: seen.append(r.seq))
    bus.subscribe(lambda r: 1 / 0)  # a broken subscriber never breaks the publisher
    for v in range(4):
        bus.publish(Notice("m", v, "x", f"n{v}"))
    assert seen == [1, 2, 3, 4]
    assert [r.seq for r in bus.since(0)] == [2, 3, 4]  # capacity 3
    assert [r.event.version for r in bus.since(2, model="m", kinds=["notice"])] == [2, 3]
    threading.Timer(0.05, bus.publish, args=(Swapped("m", 5, (5,)),)).start()
    got = bus.wait_for(lambda e: isinstance(e, Swapped), timeout=5.0, after=4)
    assert got is not None and got.event.default == 5
    assert bus.wait_for(lambda e: False, timeout=0.05) is None
    doc = got.to_dict()
    assert doc["kind"] == "swap" and doc["model"] == "m" and "now serving versions [5]" in doc["message"]


# -- routing store -----------------------------------------------------------------------------
def test_file_routing_store_compare_and_set(tmp_path):
    store = FileRoutingStore(LocalStorage(), str(tmp_path))
    assert store.read() == (None, 0)
    assert store.compare_and_set(RoutingState(labels={"a": 1}), 0) == 1
    assert store.compare_and_set(RoutingState(labels={"a": 2}), 0) is None  # stale read refused
    state, rev = update(store, lambda st: st.with_changes(pinned=3))
    assert rev == 2 and state.labels == {"a": 1} and state.pinned == 3
    changes = []
    other = FileRoutingStore(LocalStorage(), str(tmp_path))
    other.watch(lambda: changes.append(1))
    other.poll()
    assert changes == []
    update(store, lambda st: st.with_changes(pinned=None))
    other.poll()
    assert changes == [1]


# -- one model manager, in process ---------------------------------------------------------------
MODEL = """
import numpy as np
SIGNATURE = {{"inputs": {{"x": ("float32", [-1, 2])}}, "outputs": {{"y": ("float32", [-1, 2])}}}}
def predict(inputs):
    if {fail!r}:
        raise RuntimeError("broken on purpose")
    return {{"y": inputs["x"] + np.float32({offset!r})}}
"""


def _publish(base: str, build, version: int, fail: bool = False) -> None:
    d = build / f"v{version}"
    d.mkdir()
    (d / "model.py").write_text(MODEL.format(offset=float(version), fail=fail))
    publish(str(d), base, version)


@pytest.fixture
def model(tmp_path):
    base, build = str(tmp_path / "m"), tmp_path / "build"
    build.mkdir()
    bus = EventBus()
    pools = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    opts = ManagerOptions(poll_wait_seconds=0.05, settle_seconds=0.05, use_inotify=False)
    made = []

    def make(config: ModelConfig | None = None) -> ModelManager:
        mm = ModelManager(config or ModelConfig("m", base), opts, *pools, MemoryBudget(None),
                          GatePipeline(standard_gates(None), bus), bus=bus)
        made.append(mm)
        mm.start()
        return mm

    yield base, build, bus, make
    for mm in made:
        mm.stop()
    for p in pools:
        p.shutdown(wait=False)


def _wait_swap(bus: EventBus, default: int, after: int = 0) -> None:
    rec = bus.wait_for(lambda e: isinstance(e, Swapped) and e.default == default, 10.0, after)
    assert rec is not None, f"no swap to version {default}: {[r.to_dict() for r in bus.since(0)]}"


def _run(mm: ModelManager, x: float) -> tuple[int, float]:
    handle = mm.route.acquire()
    try:
        y = handle.servable.predict({"x": np.array([[x, x]], dtype=np.float32)})["y"]
        return handle.version, float(y[0, 0])
    finally:
        handle.release()


def test_manager_swaps_drains_and_isolates_failures(model):
    base, build, bus, make = model
    _publish(base, build, 1)
    mm = make()
    _wait_swap(bus, 1)
    held = mm.route.acquire()  # a request in flight on version 1
    _publish(base, build, 2)
    _wait_swap(bus, 2)
    assert _run(mm, 1.0) == (2, 3.0)
    assert mm.book.get(1).state.value == "UNLOADING" and not held.servable is None
    seq = bus.last_seq
    held.release()
    assert bus.wait_for(lambda e: getattr(e, "kind", "") == "unloaded" and e.version == 1, 10.0, seq)
    # A version failing validation never serves; the old one keeps serving; the gate says why.
    _publish(base, build, 3, fail=True)
    rec = bus.wait_for(lambda e: isinstance(e, LoadFailed) and e.version == 3, 10.0)
    assert rec is not None and "broken on purpose" in rec.event.error
    gate = bus.wait_for(lambda e: isinstance(e, GateResult) and e.version == 3 and not e.passed, 1.0)
    assert gate is not None and gate.event.gate == "validation"
    assert _run(mm, 1.0) == (2, 3.0)
    assert mm.book.get(3).state.value == "END"
    assert [g["gate"] for g in mm.book.get(2).gates] == ["manifest", "validation"]


def test_operator_commands_in_process(model):
    base, build, bus, make = model
    _publish(base, build, 1)
    _publish(base, build, 2)
    mm = make(ModelConfig("m", base, policy=Latest(1), canary=CanaryConfig(weight=0.0)))
    _wait_swap(bus, 2)
    r = control.rollback(mm, None, timeout=10)  # to the newest older version
    assert r["pinned"] == 1 and r["default_version"] == 1 and r["rolled_back"] == [2]
    r = control.set_labels(mm, {"stable": 1}, timeout=10)
    assert r["labels"] == {"stable": 1} and r["default_version"] == 1
    r = control.pin(mm, None, timeout=10)
    assert r["pinned"] is None
    with pytest.raises(NotFound):
        control.pin(mm, 9)
    # Everything persisted through the routing store: a second manager on the same path agrees.
    state, _ = mm.intent.store.read()
    assert state.labels == {"stable": 1} and 2 in state.rolled_back


def test_version_stats_keep_the_canary_window_only_during_a_split(model):
    base, build, bus, make = model
    _publish(base, build, 1)
    mm = make(ModelConfig("m", base, policy=Latest(2), canary=CanaryConfig(weight=0.5, window_seconds=3600, auto=True)))
    _wait_swap(bus, 1)
    v1 = mm.route.table.default
    assert v1.stats.events.maxlen == 200  # no split: only what the inline decision reads
    for _ in range(300):
        v1.stats.record(True, 0.001)  # what core.inference does after each request
    assert len(v1.stats.events) == 200
    seq = bus.last_seq
    _publish(base, build, 2)
    rec = bus.wait_for(lambda e: isinstance(e, Swapped) and e.canary == 2, 10.0, seq)
    assert rec is not None, [r.to_dict() for r in bus.since(seq)]
    t = mm.route.table
    assert t.default.version == 1 and t.canary.version == 2
    assert t.default.stats.events.maxlen == t.canary.stats.events.maxlen == 100_000
    assert len(t.default.stats.events) == 200  # what it had is kept
    seq = bus.last_seq
    control.pin(mm, 2, timeout=10)  # the split ends
    _wait_swap(bus, 2, seq)
    assert mm.route.table.canary is None and mm.route.table.default.stats.events.maxlen == 200


def test_inline_decision_for_a_fresh_version_keeps_the_models_current_one():
    """A version with too few samples keeps the model's decision (its first version starts in
    the threads; a successor of an inline version runs inline) until its own median decides."""
    from types import SimpleNamespace

    from hotserve.core.inline import SAMPLES, inline_ok

    def table(seconds: list[float], runtime: str = "onnxruntime", canary=None):
        lv = SimpleNamespace(servable=SimpleNamespace(runtime=runtime),
                             stats=SimpleNamespace(events=[(0.0, True, s) for s in seconds]))
        return SimpleNamespace(default=lv, canary=canary)

    fresh = table([0.00001] * (SAMPLES - 1))
    assert inline_ok(fresh, 300.0, previous=False) is False
    assert inline_ok(fresh, 300.0, previous=True) is True
    assert inline_ok(table([0.00001] * SAMPLES), 300.0, previous=False) is True  # its own samples decide
    assert inline_ok(table([0.001] * SAMPLES), 300.0, previous=True) is False
    assert inline_ok(table([0.00001] * 3, runtime="python"), 300.0, previous=True) is False
    assert inline_ok(table([0.00001] * 3, canary=object()), 300.0, previous=True) is False
    assert inline_ok(fresh, 0.0, previous=True) is False  # --inference_threading off
