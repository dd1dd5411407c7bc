"""Operator commands on one model: labels, canary, pin, rollback, explicit load and unload.

Each command changes the model's routing intent (persisted through the routing store, so it
survives restarts and reaches sibling workers), asks the model manager to reconcile, and waits
(bounded) until the change took effect; it answers with the model's routing.
"""

from __future__ import annotations

from hotserve.core.model_manager import ModelManager
from hotserve.errors import InvalidArgument, NotFound, Unavailable
from hotserve.observability.events import Rollback
from hotserve.repository.storage import StorageUnavailable


def routing(mm: ModelManager) -> dict:
    """What is being served and why, for the management API and the dashboard."""
    t = mm.route.table
    st = mm.intent.state
    return {
        "model": mm.name,
        "default_version": t.default.version if t.default else None,
        "served_versions": sorted(t.versions),
        "labels": {k: v.version for k, v in sorted(t.labels.items())},
        "requested_labels": dict(sorted(st.labels.items())),
        "pinned": st.pinned,
        "canary": {"version": t.canary.version, "weight": t.canary_weight} if t.canary else None,
        "rolled_back": sorted(st.rolled_back),
        "fleet_target": st.fleet_target,
        "prepared": sorted(v for v in mm.loaded_versions() if v not in t.versions),
        "inference_threading": "event loop (small requests)" if mm.inline_ok else "worker pool",
    }


def _apply(mm: ModelManager, timeout: float, must_be_available: list[int]) -> dict:
    seen = mm.trigger()
    if not mm.wait_reconciled(seen, timeout):
        raise Unavailable(f"model {mm.name!r}: the change did not finish within {timeout:g}s; it continues in the background")
    loaded = mm.loaded_versions()
    for v in must_be_available:
        if v not in loaded:
            st = mm.book.get(v)
            why = st.error_message if st and st.error_message else "it did not load"
            raise Unavailable(f"model {mm.name!r} version {v} is not available: {why}")
    return routing(mm)


def set_labels(mm: ModelManager, changes: dict[str, int | None], timeout: float = 60.0) -> dict:
    """Move (or with None remove) labels; a label moves once its version is AVAILABLE."""
    complete = mm.complete_versions()
    for label, version in changes.items():
        if not label:
            raise InvalidArgument("label names must be non-empty")
        if version is not None and version not in complete:
            raise NotFound(f"model {mm.name!r} has no complete version {version} to label {label!r}; "
                           f"complete versions: {sorted(complete)}")

    def fn(st):
        labels, rolled = dict(st.labels), dict(st.rolled_back)
        for label, version in changes.items():
            if version is None:
                labels.pop(label, None)
            else:
                labels[label] = version
                rolled.pop(version, None)  # labelling it again is an explicit choice
        return st.with_changes(labels=labels, rolled_back=rolled)

    mm.intent.change(fn, "operator", "labels")
    return _apply(mm, timeout, [v for v in changes.values() if v is not None])


def set_canary(mm: ModelManager, version: int | None, weight: float | None, timeout: float = 60.0) -> dict:
    if weight is not None and not 0 <= weight <= 100:
        raise InvalidArgument(f"canary weight is a percentage from 0 to 100, got {weight}")
    stable = None
    if version is not None and mm.intent.state.labels.get("stable") in (None, version):
        # Canarying needs a stable side: the version serving now, or if that is the canary
        # itself, the newest other loaded version.
        default = mm.route.table.default
        others = sorted((v for v in mm.loaded_versions() if v != version), reverse=True)
        if default is not None and default.version != version:
            stable = default.version
        elif others:
            stable = next((v for v in others if v < version), others[0])
        else:
            raise InvalidArgument(f"model {mm.name!r}: a canary needs another loaded version as stable; "
                                  f"only version {version} is loaded")

    def fn(st):
        labels = dict(st.labels)
        if stable is not None:
            labels["stable"] = stable
        if version is None:
            labels.pop("canary", None)
        kw = {"labels": labels}
        if weight is not None:
            kw["canary_weight"] = float(weight)
        return st.with_changes(**kw)

    mm.intent.change(fn, "operator", "canary", version)
    if version is None:
        return _apply(mm, timeout, [])
    return set_labels(mm, {"canary": version}, timeout)


def pin(mm: ModelManager, version: int | None, timeout: float = 60.0) -> dict:
    complete = mm.complete_versions()
    if version is not None and version not in complete:
        raise NotFound(f"model {mm.name!r} has no complete version {version} to pin; complete versions: {sorted(complete)}")

    def fn(st):
        rolled = dict(st.rolled_back)
        if version is not None:
            rolled.pop(version, None)
        return st.with_changes(pinned=version, rolled_back=rolled)

    mm.intent.change(fn, "operator", "pin", version)
    return _apply(mm, timeout, [version] if version is not None else [])


def rollback(mm: ModelManager, to: int | None = None, timeout: float = 60.0) -> dict:
    """Serve `to` (default: the version served before the current one) and keep the current
    one out until its directory changes. Pins the target so newer versions do not go live
    until the pin is cleared. Instant when the target is still loaded."""
    current = mm.route.table.default
    complete = mm.complete_versions()
    if to is None:
        older = [v for v in reversed(mm.default_history) if current is None or v != current.version]
        older = [v for v in older if v in complete] or sorted(
            (v for v in complete if current is None or v < current.version), reverse=True)
        if not older:
            raise NotFound(f"model {mm.name!r} has no earlier complete version to roll back to")
        to = older[0]
    if to not in complete:
        raise NotFound(f"model {mm.name!r} has no complete version {to}; complete versions: {sorted(complete)}")

    def fn(st):
        rolled = dict(st.rolled_back)
        labels = dict(st.labels)
        if current is not None and current.version != to and current.version in complete:
            rolled[current.version] = complete[current.version].fingerprint
        rolled.pop(to, None)
        for label, v in list(labels.items()):
            if current is not None and v == current.version:
                if label == "canary":
                    del labels[label]
                else:
                    labels[label] = to
        return st.with_changes(pinned=to, rolled_back=rolled, labels=labels)

    mm.intent.change(fn, "operator", "rollback", to)
    mm.bus.publish(Rollback(mm.name, to, current.version if current else None, "manual"))
    return _apply(mm, timeout, [to])


def request_load(mm: ModelManager, timeout: float = 60.0) -> int:
    """Serve again after an unload and pick up the newest complete version now; blocks until
    it is AVAILABLE and returns it. Raises if nothing could be made available."""
    mm.intent.change(lambda st: st.with_changes(unloaded=False), "operator", "load")
    try:
        seen = mm.rescan()
    except StorageUnavailable as exc:
        raise Unavailable(f"model {mm.name!r} could not be loaded: {exc}") from None
    if not mm.wait_reconciled(seen, timeout):
        raise Unavailable(f"model {mm.name!r}: no load finished within {timeout:g}s")
    default = mm.route.table.default
    if default is None:
        reason = mm.outage or "; ".join(
            f"version {st.version}: {st.error_message}" for st in mm.statuses() if st.error_message
        ) or f"no complete version under {mm.base_path}"
        raise Unavailable(f"model {mm.name!r} could not be loaded: {reason}")
    return default.version


def request_unload(mm: ModelManager, timeout: float = 60.0) -> None:
    """Stop routing to every version; returns once their in-flight requests drained."""
    draining = mm.loaded()
    mm.intent.change(lambda st: st.with_changes(unloaded=True), "operator", "unload")
    mm.wait_reconciled(mm.trigger(), timeout)
    for lv in draining:
        lv.wait_drained(timeout)
