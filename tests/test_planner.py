"""The planner, table-tested like TF Serving's AvailabilityPreservingPolicy::GetNextAction: pure
inputs (snapshot + intent) to one step (table, next load, unloads, label changes). No threads,
no I/O, no server process."""

from __future__ import annotations

import pytest

from hotserve.core.planner import EMPTY, Intent, Snapshot, TableSpec, build_table, plan
from hotserve.core.policy import All, Latest, Specific

fs = frozenset


def table(versions, default, labels=None, canary=None, weight=0.0) -> TableSpec:
    return TableSpec(fs(versions), default, labels or {}, canary, weight)


CASES = [
    # (name, snapshot, intent, expected load, expected table, expected unload)
    ("nothing in the repository", Snapshot(), Intent(), None, EMPTY, fs()),
    ("first version: load it, nothing to route yet",
     Snapshot(complete=fs({1})), Intent(), 1, EMPTY, fs()),
    ("first version loaded: route it",
     Snapshot(complete=fs({1}), loaded=fs({1})), Intent(), None, table({1}, 1), fs()),
    ("new version: load it while the old one keeps serving",
     Snapshot(complete=fs({1, 2}), loaded=fs({1}), table=table({1}, 1)), Intent(), 2, table({1}, 1), fs()),
    ("new version loaded: swap, then retire the old",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({1}, 1)), Intent(), None, table({2}, 2), fs({1})),
    ("newest removed: load the previous first, keep serving the removed one meanwhile",
     Snapshot(complete=fs({1}), loaded=fs({2}), table=table({2}, 2)), Intent(), 1, table({2}, 2), fs()),
    ("failed version is never wanted: the old one keeps serving",
     Snapshot(complete=fs({1, 2}), failed=fs({2}), loaded=fs({1}), table=table({1}, 1)), Intent(), None,
     table({1}, 1), fs()),
    ("every version failed: keep what serves",
     Snapshot(complete=fs({2}), failed=fs({2}), loaded=fs({1}), table=table({1}, 1)), Intent(), None,
     table({1}, 1), fs()),
    ("rolled back version is skipped",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({2}, 2)), Intent(rolled_back=fs({2})), None,
     table({1}, 1), fs({2})),
    ("latest 2 loads the newest missing first",
     Snapshot(complete=fs({1, 2, 3}), loaded=fs({1}), table=table({1}, 1)), Intent(policy=Latest(2)), 3,
     table({1}, 1), fs()),
    ("all versions", Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({1, 2}, 2)), Intent(policy=All()),
     None, table({1, 2}, 2), fs()),
    ("specific policy", Snapshot(complete=fs({1, 2, 3}), loaded=fs({2}), table=table({2}, 2)),
     Intent(policy=Specific(fs({2}))), None, table({2}, 2), fs()),
    ("pin overrides the policy",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({2}, 2)), Intent(pinned=1), None, table({1}, 1),
     fs({2})),
    ("pin of a missing version follows the policy",
     Snapshot(complete=fs({1, 2}), loaded=fs({2}), table=table({2}, 2)), Intent(pinned=7), None, table({2}, 2), fs()),
    ("label keeps its version loaded and routable",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({2}, 2)), Intent(labels={"stable": 1}), None,
     table({1, 2}, 1, {"stable": 1}), fs()),
    ("label moves only once its target is loaded",
     Snapshot(complete=fs({1, 2}), loaded=fs({1}), table=table({1}, 1, {"stable": 1})), Intent(labels={"stable": 2}), 2,
     table({1}, 1, {"stable": 1}), fs()),
    ("canary split between stable and canary labels",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({1}, 1, {"stable": 1})),
     Intent(labels={"stable": 1, "canary": 2}, canary_weight=10.0), None,
     table({1, 2}, 1, {"stable": 1, "canary": 2}, canary=2, weight=10.0), fs()),
    ("canary weight 0: no split",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({1}, 1, {"stable": 1})),
     Intent(labels={"stable": 1, "canary": 2}, canary_weight=0.0), None, table({1, 2}, 1, {"stable": 1, "canary": 2}), fs()),
    ("unloaded on request: empty table, retire everything",
     Snapshot(complete=fs({1}), loaded=fs({1}), table=table({1}, 1)), Intent(unloaded=True), None, EMPTY, fs({1})),
]


@pytest.mark.parametrize("name, snap, intent, load, want_table, unload", CASES, ids=[c[0] for c in CASES])
def test_next_step(name, snap, intent, load, want_table, unload):
    step = plan(snap, intent)
    assert step.load == load
    assert step.table.same_routing(want_table), f"{step.table} != {want_table}"
    assert step.unload == unload


def test_never_unloads_what_the_new_table_routes():
    """Availability: whatever a plan retires is absent from the table it publishes."""
    for _, snap, intent, *_ in CASES:
        step = plan(snap, intent)
        assert not (step.unload & step.table.versions)


def test_auto_canary_makes_the_new_version_a_canary():
    snap = Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({1}, 1))
    step = plan(snap, Intent(auto_canary=True, canary_weight=10.0))
    assert step.label_changes == {"stable": 1, "canary": 2}
    assert step.table.same_routing(table({1, 2}, 1, {"stable": 1, "canary": 2}, canary=2, weight=10.0))
    assert step.unload == fs()


def test_auto_canary_first_version_is_stable():
    step = plan(Snapshot(complete=fs({1}), loaded=fs({1})), Intent(auto_canary=True, canary_weight=10.0))
    assert step.label_changes == {"stable": 1}
    assert step.table.default == 1 and step.table.canary is None


def test_build_table_keeps_serving_versions_while_loading():
    t = build_table(fs({3, 4}), fs({4, 5}), Intent(policy=Latest(2)), table({3, 4}, 4), keep=fs({3, 4}))
    assert t.versions == fs({3, 4}) and t.default == 4


def test_plan_is_pure():
    snap = Snapshot(complete=fs({1, 2}), loaded=fs({1}), table=table({1}, 1))
    intent = Intent(labels={"x": 2})
    assert plan(snap, intent) == plan(snap, intent)
    assert intent.labels == {"x": 2} and snap.loaded == fs({1})
