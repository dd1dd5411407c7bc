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
    # -- prepared versions (a rollout's phase 1) and the fleet target ---------------------------
    ("prepare without a fleet: load it beside the serving version, do not route it",
     Snapshot(complete=fs({1, 2}), loaded=fs({2}), table=table({2}, 2)), Intent(prepare=fs({1})), 1,
     table({2}, 2), fs()),
    ("prepared and loaded: kept, still not routed",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({2}, 2)), Intent(prepare=fs({1})), None,
     table({2}, 2), fs()),
    ("prepare of a failed or missing version is ignored",
     Snapshot(complete=fs({1, 2}), failed=fs({1}), loaded=fs({2}), table=table({2}, 2)), Intent(prepare=fs({1, 9})),
     None, table({2}, 2), fs()),
    ("fleet target: a newer version is only prepared",
     Snapshot(complete=fs({1, 2}), loaded=fs({1}), table=table({1}, 1)), Intent(fleet_target=1), 2,
     table({1}, 1), fs()),
    ("fleet target: the prepared newer version stays loaded, unrouted",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({1}, 1)), Intent(fleet_target=1), None,
     table({1}, 1), fs()),
    ("fleet flip: the target is loaded, swap at once; the policy's pick stays prepared",
     Snapshot(complete=fs({1, 2, 3}), loaded=fs({1, 2, 3}), table=table({1}, 1)), Intent(fleet_target=2), None,
     table({2}, 2), fs({1})),
    ("fleet flip keeps the previous version loaded while it is to be kept",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({1}, 1)), Intent(fleet_target=2, prepare=fs({1})),
     None, table({2}, 2), fs()),
    ("fleet rollback to an older version: it serves even though the policy prefers the newest",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({2}, 2)), Intent(fleet_target=1), None,
     table({1}, 1), fs()),
    ("fleet target over a rolled-back mark: the rollout is the newer decision",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({1}, 1)), Intent(fleet_target=2, rolled_back=fs({2})),
     None, table({2}, 2), fs()),
    ("joining replica: load the fleet's version before the newer prepared one",
     Snapshot(complete=fs({1, 2, 3})), Intent(fleet_target=1), 1, EMPTY, fs()),
    ("joining replica: the fleet's version is loaded, serve it; prepare the newest next",
     Snapshot(complete=fs({1, 2, 3}), loaded=fs({1})), Intent(fleet_target=1), 3, table({1}, 1), fs()),
    ("lagging replica: the fleet moved on; no default until the target is loaded here",
     Snapshot(complete=fs({1, 2}), loaded=fs({1}), table=table({1}, 1)), Intent(fleet_target=2), 2, EMPTY, fs()),
    ("target failed here: serve no default, keep the old version loaded for a rollback",
     Snapshot(complete=fs({1, 2}), failed=fs({2}), loaded=fs({1}), table=table({1}, 1)), Intent(fleet_target=2),
     None, EMPTY, fs()),
    ("target missing from this replica's repository: serve no default",
     Snapshot(complete=fs({1}), loaded=fs({1}), table=table({1}, 1)), Intent(fleet_target=2), None, EMPTY, fs()),
    ("labels still route on a lagging replica",
     Snapshot(complete=fs({1, 2}), loaded=fs({1}), table=table({1}, 1, {"gold": 1})),
     Intent(fleet_target=2, labels={"gold": 1}), 2, table({1}, None, {"gold": 1}), fs()),
    ("a pin outranks the fleet target, whose version stays loaded",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2}), table=table({2}, 2)), Intent(fleet_target=2, pinned=1), None,
     table({1}, 1), fs()),
    ("fleet replica, no fleet version yet: prepare the policy's pick, serve nothing",
     Snapshot(complete=fs({1, 2})), Intent(fleet=True), 2, EMPTY, fs()),
    ("fleet replica, no fleet version yet: prepared and loaded, still nothing serves",
     Snapshot(complete=fs({1, 2}), loaded=fs({2})), Intent(fleet=True), None, EMPTY, fs()),
    ("fleet replica, labels route even before the fleet has a version",
     Snapshot(complete=fs({1, 2}), loaded=fs({1, 2})), Intent(fleet=True, labels={"gold": 1}), None,
     table({1}, None, {"gold": 1}), fs()),
    ("fleet target beside a canary: the split is between the target and the canary",
     Snapshot(complete=fs({1, 2, 3}), loaded=fs({2, 3}), table=table({2}, 2)),
     Intent(fleet_target=2, labels={"stable": 2, "canary": 3}, canary_weight=10.0), None,
     table({2, 3}, 2, {"stable": 2, "canary": 3}, canary=3, weight=10.0), fs()),
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


def test_plan_reports_prepared_versions():
    step = plan(Snapshot(complete=fs({1, 2, 3}), loaded=fs({1, 2, 3}), table=table({1}, 1)),
                Intent(fleet_target=1, prepare=fs({2})))
    assert step.prepared == fs({2, 3}) and step.desired == fs({1})
    assert plan(Snapshot(complete=fs({1}), loaded=fs({1})), Intent()).prepared == fs()


def test_unset_fleet_fields_change_nothing():
    """Every case without fleet fields plans exactly as an Intent built without them."""
    for _, snap, intent, *_ in CASES:
        if intent.fleet_target is None and not intent.prepare and not intent.fleet:
            bare = Intent(intent.policy, intent.labels, intent.pinned, intent.rolled_back, intent.canary_weight,
                          intent.auto_canary, intent.unloaded)
            assert plan(snap, bare) == plan(snap, intent)


def test_lagging_replica_note_says_why():
    step = plan(Snapshot(complete=fs({1, 2}), failed=fs({2}), loaded=fs({1}), table=table({1}, 1)), Intent(fleet_target=2))
    assert "fleet serves version 2, which failed to load here" in step.note
    step = plan(Snapshot(complete=fs({1}), loaded=fs({1}), table=table({1}, 1)), Intent(fleet_target=2))
    assert "not complete in this replica's repository" in step.note


def test_plan_is_pure():
    snap = Snapshot(complete=fs({1, 2}), loaded=fs({1}), table=table({1}, 1))
    intent = Intent(labels={"x": 2})
    assert plan(snap, intent) == plan(snap, intent)
    assert intent.labels == {"x": 2} and snap.loaded == fs({1})
