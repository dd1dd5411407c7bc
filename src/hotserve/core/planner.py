"""The planner: a pure function from what exists and what is wanted to what to do next.

Inputs are a snapshot of one model (complete versions in the repository, versions that failed,
versions loaded and the route table now) and its routing intent (version policy, labels, pin,
rolled-back versions, canary weight and mode, unloaded, and in a fleet the fleet's target and
the versions to prepare). The output is one step: the route table to publish now, at most one
version to load next, the loaded versions nobody wants any more, and label changes the intent
itself asks for (`canary: {auto: true}` turns a new version into the canary). No threads, no I/O, no clock: the model manager applies a plan, then asks
again, until nothing is left to load (as TF Serving's AvailabilityPreservingPolicy hands the
aspired-versions manager one action at a time).

Availability comes first: the table never drops a version that still serves while another one
is loading, a version is unloaded only after the table that stops routing to it is published,
and when nothing is loadable the table stays as it is.

A fleet (cluster/) adds two things. A *prepared* version is loaded, gated and warm but not
routed: the versions a rollout's first phase asks for, the previous fleet version kept for an
instant rollback, and, on a fleet's replica, whatever the version policy picks. The
*fleet target* is the version every replica serves by default; it replaces the policy's say
over what serves. A replica that does not have the target loaded (still loading it, or it
failed here) serves no default at all rather than an older version, so once a rollout flips
the fleet no request meets the version the fleet left (a balancer retries elsewhere, and the
replica is not ready until it converges). Unset, both leave every behaviour as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

from hotserve.core.policy import Latest, VersionPolicy


@dataclass(frozen=True)
class TableSpec:
    """A route table in version numbers (the router's RouteTable holds the loaded versions)."""

    versions: frozenset[int] = frozenset()
    default: int | None = None
    labels: Mapping[str, int] = field(default_factory=dict)
    canary: int | None = None
    canary_weight: float = 0.0

    def same_routing(self, other: "TableSpec") -> bool:
        return (self.versions == other.versions and self.default == other.default
                and dict(self.labels) == dict(other.labels) and self.canary == other.canary
                and self.canary_weight == other.canary_weight)


EMPTY = TableSpec()


@dataclass(frozen=True)
class Intent:
    policy: VersionPolicy = field(default_factory=Latest)
    labels: Mapping[str, int] = field(default_factory=dict)
    pinned: int | None = None
    rolled_back: frozenset[int] = frozenset()
    canary_weight: float = 0.0
    auto_canary: bool = False
    unloaded: bool = False
    # This replica belongs to a fleet (cluster/): what serves by default is the fleet's target
    # alone; the policy's picks are only prepared, until a rollout flips the target to them.
    # With no target yet nothing serves (the first replica to prepare a version proposes one).
    fleet: bool = False
    fleet_target: int | None = None
    # Versions to load, gate and warm up without routing to them (a rollout's first phase; the
    # previous fleet version, kept for a rollback).
    prepare: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Snapshot:
    complete: frozenset[int] = frozenset()
    failed: frozenset[int] = frozenset()
    loaded: frozenset[int] = frozenset()
    table: TableSpec = EMPTY


@dataclass(frozen=True)
class Plan:
    table: TableSpec  # publish this now (equal to the snapshot's table: nothing to swap)
    load: int | None = None  # load this next, then plan again
    unload: frozenset[int] = frozenset()  # retire these after publishing the table
    label_changes: Mapping[str, int] = field(default_factory=dict)  # intent changes to persist first
    desired: frozenset[int] = frozenset()  # what the policy (or pin, or fleet target) serves by default
    note: str = ""  # why nothing happens, when that is worth saying
    prepared: frozenset[int] = frozenset()  # loaded (or to load) without being routed


@dataclass(frozen=True)
class Selection:
    desired: frozenset[int]  # serves by default
    labelled: frozenset[int]  # routable by label
    prepared: frozenset[int]  # loaded, not routed (disjoint from desired)
    note: str = ""

    @property
    def wanted(self) -> frozenset[int]:
        return self.desired | self.labelled | self.prepared


def select(s: Snapshot, i: Intent) -> Selection:
    """Which versions serve by default, which by label, which are only prepared."""

    def loadable(v: int) -> bool:
        return v in s.complete and v not in s.failed

    picks = frozenset(i.policy.select([v for v in s.complete if loadable(v) and v not in i.rolled_back]))
    prepared = frozenset(v for v in i.prepare if loadable(v))
    note = ""
    if fleet_managed(i):
        prepared |= picks
        target = i.fleet_target
        desired = frozenset({target}) if target is not None and loadable(target) else frozenset()
        if target is None:
            note = "the fleet has no serving version yet; preparing, serving nothing until one is set"
        elif not desired:
            why = "failed to load here" if target in s.failed else "is not complete in this replica's repository"
            note = (f"the fleet serves version {target}, which {why}; serving no default version until it "
                    "loads (this replica reports not ready)")
    else:
        desired = picks
    if i.pinned is not None:
        if loadable(i.pinned):
            if fleet_managed(i):
                prepared |= desired  # the fleet's version stays warm behind the pin
            desired = frozenset({i.pinned})
        else:
            note = f"pinned version {i.pinned} is not a complete, loadable version; following the policy"
    labelled = frozenset(v for v in i.labels.values() if loadable(v))
    return Selection(desired, labelled, prepared - desired, note)


def wanted_versions(s: Snapshot, i: Intent) -> tuple[frozenset[int], frozenset[int], str]:
    """(desired: what serves by default, wanted: desired + every labelled and prepared version, note)."""
    sel = select(s, i)
    return sel.desired, sel.wanted, sel.note


def fleet_managed(i: Intent) -> bool:
    return i.fleet or i.fleet_target is not None


def fleet_holds(s: Snapshot, i: Intent) -> bool:
    """The fleet serves a version this replica has not loaded (or has no version yet): serve no
    default meanwhile."""
    return fleet_managed(i) and i.pinned is None and i.fleet_target not in s.loaded and not i.unloaded


def _held(table: TableSpec) -> TableSpec:
    """`table` without a default (and so without a canary split): only labels still route."""
    return TableSpec(frozenset(table.labels.values()), None, dict(table.labels))


def auto_canary_labels(s: Snapshot, i: Intent, desired: frozenset[int]) -> dict[str, int]:
    """With `canary: {auto: true}` the newest loaded desired version enters as the canary beside
    a stable one instead of becoming the default: the label changes that says."""
    if not i.auto_canary or i.pinned is not None:
        return {}
    live = sorted(v for v in desired if v in s.loaded)
    if not live:
        return {}
    newest = live[-1]
    changes: dict[str, int] = {}
    stable = i.labels.get("stable")
    if stable is None or stable not in s.loaded:
        old = s.table.default
        stable = old if old is not None and old != newest else newest
        changes["stable"] = stable
    if newest > stable and i.labels.get("canary") != newest:
        changes["canary"] = newest
    return changes


def build_table(loaded: frozenset[int], desired: frozenset[int], i: Intent, current: TableSpec,
                keep: frozenset[int] = frozenset()) -> TableSpec:
    """The table routing to loaded versions as the intent says. A label moves only once its
    target is loaded (until then it keeps its current target, if still loaded); `keep` are
    versions that stay routable by number (those serving while others load)."""
    labels: dict[str, int] = {}
    for label, target in i.labels.items():
        if target in loaded:
            labels[label] = target
        elif label in current.labels and current.labels[label] in loaded:
            labels[label] = current.labels[label]
    versions = {v for v in loaded if v in desired or v in keep} | set(labels.values())
    canary = labels.get("canary")
    if i.pinned is not None and i.pinned in loaded:
        default: int | None = i.pinned
    elif fleet_managed(i):
        default = i.fleet_target if i.fleet_target in loaded else None
    elif "stable" in labels:
        default = labels["stable"]
    else:
        pool = [v for v in versions if v in desired and v != canary] or [v for v in versions if v in desired] or list(versions)
        default = max(pool) if pool else None
    split = canary is not None and default is not None and canary != default and i.canary_weight > 0 and i.pinned is None
    return TableSpec(frozenset(versions), default, labels, canary if split else None, i.canary_weight if split else 0.0)


def plan(s: Snapshot, i: Intent) -> Plan:
    """The next step for one model."""
    if i.unloaded:
        return Plan(table=EMPTY, unload=s.loaded, note="unloaded on request")
    sel = select(s, i)
    desired, wanted, note = sel.desired, sel.wanted, sel.note
    hold = fleet_holds(s, i)
    if not wanted:
        if s.loaded:
            note = note or "no loadable version in the repository; keeping the served versions"
        return Plan(table=_held(s.table) if hold else s.table, note=note)
    changes = auto_canary_labels(s, i, desired)
    if changes:
        i = replace(i, labels={**i.labels, **changes})
    missing = wanted - s.loaded
    if missing:
        # While loading, whatever serves now stays routable (unless the fleet moved on); the
        # table may gain what just loaded. What will route loads before what is only prepared.
        table = build_table(s.loaded, desired, i, s.table, keep=s.table.versions & s.loaded)
        if hold:
            table = _held(table)
        elif not table.versions:
            table = s.table
        routed_missing = missing - sel.prepared
        load = max(routed_missing) if routed_missing else max(missing)
        return Plan(table=table, load=load, label_changes=changes, desired=desired, note=note,
                    prepared=sel.prepared)
    table = build_table(s.loaded, desired, i, s.table)
    if hold:
        table = _held(table)
    keep = wanted | frozenset(table.labels.values())
    return Plan(table=table, unload=s.loaded - keep, label_changes=changes, desired=desired, note=note,
                prepared=sel.prepared)
