"""The two-phase rollout: every live replica prepares the version, then one write flips the fleet.

Phase 1 adds the version to the model's `prepare` set in ZooKeeper. Every replica's planner
loads it, runs its gates and warm-up, and does not route to it; each replica reports the
version's state in its member znode. The rollout waits until every live replica reports it
AVAILABLE (or `min_ready` of them, the rest failing readiness until they converge). A replica
that fails to prepare it aborts the rollout before any replica switched: the version leaves
`prepare`, every replica keeps serving what it served, and the result names the replica and
its error. A timeout aborts the same way.

Phase 2 is one compare-and-set on the routing znode: `fleet_target` becomes the version, the
previous one is kept prepared for `keep_previous_seconds` (a rollback within that time is one
more write and no load). Every replica's watch fires and it swaps; the rollout waits until
each prepared replica reports serving the version and measures the skew from the write (when
ZooKeeper applied it: the znode's mtime) to the last replica's swap (their clocks are compared,
so on several machines it includes their offset).

One rollout of a model at a time (a ZooKeeper lock). The model's rollout record keeps the
fleet's version history (what `--rollback` goes back to) and the highest version ever rolled
out (what `--fleet_auto_rollout` compares new versions with). Used by `hotserve rollout` and by
replicas started with `--fleet_auto_rollout`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from hotserve.cluster import zk
from hotserve.cluster.routing_store import ZkRoutingStore
from hotserve.cluster.view import FleetView
from hotserve.repository.routing_store import RoutingState

HISTORY_LENGTH = 20


@dataclass(frozen=True)
class RolloutOptions:
    min_ready: int | None = None  # None: every live replica must prepare the version
    prepare_timeout: float = 120.0  # phase 1 bound
    flip_timeout: float = 30.0  # phase 2: bound on replicas reporting the new version
    keep_previous_seconds: float = 300.0
    lock_timeout: float = 30.0
    only_if_newer: bool = False  # auto rollout: skip versions at or below the high-water mark


@dataclass
class RolloutResult:
    model: str
    version: int | None
    previous: int | None
    outcome: str  # done | aborted | unchanged | skipped
    message: str
    replicas: dict[str, str] = field(default_factory=dict)  # replica id -> what it reported
    prepare_seconds: float = 0.0
    skew_seconds: float | None = None  # flip write -> last replica serving the version
    spread_seconds: float | None = None  # first -> last replica serving it
    lagging: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.outcome in ("done", "unchanged", "skipped")


def member_state(doc: dict, model: str, version: int) -> tuple[str, str]:
    """(ready | failed | pending | draining | absent, detail) for one member and one version."""
    m = doc.get("models", {}).get(model)
    if m is None:
        return "absent", f"does not serve model {model}"
    if doc.get("draining"):
        return "draining", "shutting down"
    error = m.get("failed", {}).get(str(version))
    if error:
        return "failed", error
    state = m.get("versions", {}).get(str(version))
    if state == "AVAILABLE":
        return "ready", "loaded, gates passed, warmed up"
    if state is None:
        return "pending", f"has not found version {version} in its repository yet"
    return "pending", f"version {version} is {state}"


def read_record(client, address: zk.FleetAddress, model: str) -> tuple[dict, object]:
    doc, stat = zk.read_json(client, address.record(model))
    return doc or {}, stat


def write_record(client, address: zk.FleetAddress, model: str, change: Callable[[dict], dict]) -> dict:
    """Read-modify-write of the rollout record with the znode version (retried on conflict)."""
    from kazoo.exceptions import BadVersionError, NodeExistsError

    path = address.record(model)
    for _ in range(20):
        doc, stat = read_record(client, address, model)
        new = change(dict(doc))
        try:
            if stat is None:
                zk.call(client.create_async(path, zk.dumps(new), makepath=True), what=f"create {path}")
            else:
                zk.call(client.set_async(path, zk.dumps(new), version=stat.version), what=f"write {path}")
            return new
        except (BadVersionError, NodeExistsError):
            continue
    raise zk.FleetUnavailable(f"rollout record {path} kept changing under 20 attempts to update it")


class Rollout:
    """One rollout of one model; `run()` does both phases and returns what happened."""

    def __init__(self, client, address: zk.FleetAddress, model: str, options: RolloutOptions = RolloutOptions(),
                 say: Callable[[str], None] = lambda line: None, who: str = "cli") -> None:
        self.client = client
        self.address = address
        self.model = model
        self.options = options
        self.say = say
        self.who = who
        self.view = FleetView(client, address)
        self.store = ZkRoutingStore(client, address.routing(model))

    # -- entry points ----------------------------------------------------------------------------
    def run(self, version: int) -> RolloutResult:
        return self._locked(lambda: self._rollout(version, rollback=False))

    def rollback(self) -> RolloutResult:
        return self._locked(self._rollback)

    def _locked(self, body: Callable[[], RolloutResult]) -> RolloutResult:
        from kazoo.exceptions import LockTimeout

        lock = self.client.Lock(self.address.lock(self.model), self.who)
        try:
            lock.acquire(timeout=self.options.lock_timeout)
        except LockTimeout:
            holders = ", ".join(c for c in lock.contenders() if c != self.who) or "another rollout"
            return RolloutResult(self.model, None, None, "aborted",
                                 f"another rollout of model {self.model} is in progress ({holders}); "
                                 f"waited {self.options.lock_timeout:g}s for it")
        try:
            result = body()
        finally:
            try:
                lock.release()
            except Exception:  # the lock node is ephemeral: it goes with the session anyway
                pass
        return result

    # -- the two phases ----------------------------------------------------------------------------
    def _rollback(self) -> RolloutResult:
        state, _ = self.store.read()
        record, _ = read_record(self.client, self.address, self.model)
        history = [v for v in record.get("history", [])]
        current = state.fleet_target if state else None
        if current is not None and (not history or history[-1] != current):
            history.append(current)
        if len(history) < 2:
            return RolloutResult(self.model, None, current, "aborted",
                                 f"model {self.model}: no earlier fleet version to roll back to "
                                 f"(fleet version history: {history or 'empty'})")
        return self._rollout(history[-2], rollback=True)

    def _rollout(self, version: int, rollback: bool) -> RolloutResult:
        opts = self.options
        state, _ = self.store.read()
        state = state or RoutingState()
        previous = state.fleet_target
        record, _ = read_record(self.client, self.address, self.model)
        high_water = max(int(record.get("high_water", 0) or 0), previous or 0)
        if opts.only_if_newer and version <= high_water:
            return RolloutResult(self.model, version, previous, "skipped",
                                 f"version {version} is not newer than {high_water}, the newest the fleet rolled out")
        verb = "rollback" if rollback else "rollout"
        started = time.time()
        if version == previous:
            return self._confirm_unchanged(version, started)
        write_record(self.client, self.address, self.model,
                     lambda r: {**r, "high_water": max(high_water, version) if not rollback else high_water,
                                "active": {"version": version, "previous": previous, "phase": "prepare",
                                           "started": started, "by": self.who}})
        self.say(f"{verb} of model {self.model}: version {version}, the fleet serves "
                 f"{previous if previous is not None else 'no fleet version yet'}")
        self._update(lambda st: st.with_changes(prepare=tuple(sorted(set(st.prepare) | {version}))))
        ready, replicas, why = self._prepare(version)
        prepare_seconds = time.time() - started
        if why:
            self._update(lambda st: st.with_changes(prepare=tuple(v for v in st.prepare if v != version)))
            serving = f"every replica still serves version {previous}" if previous is not None else \
                "no replica switched"
            result = RolloutResult(self.model, version, previous, "aborted", f"{why}; {serving}", replicas,
                                   prepare_seconds)
            self._finish(result, started, rollback)
            return result
        self.say(f"phase 1: {len(ready)} replica(s) prepared version {version} in {prepare_seconds:.2f}s")
        flip_at = self._flip(version, previous, state)
        skew, spread, lagging = self._await_flip(version, ready, flip_at)
        for rid in lagging:
            replicas[rid] = replicas.get(rid, "") + "; not serving it yet (fails readiness until it converges)"
        if skew is None:
            message = (f"flipped the fleet to version {version}, but not every prepared replica reported serving it "
                       f"within {opts.flip_timeout:g}s: {', '.join(lagging)}")
            result = RolloutResult(self.model, version, previous, "aborted", message, replicas, prepare_seconds,
                                   lagging=tuple(lagging))
        else:
            back = (f"roll forward with: hotserve rollout {self.model} --version {previous}" if rollback
                    else f"hotserve rollout {self.model} --rollback")
            keep = (f"; version {previous} stays loaded for {opts.keep_previous_seconds:g}s ({back})"
                    if previous is not None and opts.keep_previous_seconds > 0 else "")
            message = (f"model {self.model} serves version {version} on {len(ready)} replica(s); the last swapped "
                       f"{skew * 1000:.0f} ms after the flip (spread {spread * 1000:.0f} ms){keep}")
            result = RolloutResult(self.model, version, previous, "done", message, replicas, prepare_seconds, skew,
                                   spread, tuple(lagging))
        self._finish(result, started, rollback)
        return result

    def _prepare(self, version: int) -> tuple[list[str], dict[str, str], str]:
        """Phase 1: (ready replica ids, replica -> detail, why it aborts or "")."""
        opts = self.options
        announced: dict[str, str] = {}

        def check(members: dict[str, dict]) -> str | None:
            states = {rid: member_state(doc, self.model, version) for rid, doc in members.items()}
            states = {rid: s for rid, s in states.items() if s[0] not in ("absent", "draining")}
            for rid, (s, detail) in states.items():
                if s != "pending" and announced.get(rid) != s:
                    announced[rid] = s
                    self.say(f"  {rid}: {s}" + (f": {detail}" if s == "failed" else ""))
            ready = [r for r, (s, _) in states.items() if s == "ready"]
            failed = [r for r, (s, _) in states.items() if s == "failed"]
            pending = [r for r, (s, _) in states.items() if s == "pending"]
            if not states:
                return "none"
            if failed and opts.min_ready is None:
                return "failed"
            if opts.min_ready is not None and len(ready) + len(pending) < opts.min_ready:
                return "failed"
            if not pending and len(ready) >= (opts.min_ready or len(states)):
                return "ready"
            return None

        verdict, members = self.view.wait_until(check, opts.prepare_timeout)
        states = {rid: member_state(doc, self.model, version) for rid, doc in members.items()}
        states = {rid: s for rid, s in states.items() if s[0] not in ("absent", "draining")}
        replicas = {rid: f"{s}: {detail}" for rid, (s, detail) in sorted(states.items())}
        ready = sorted(r for r, (s, _) in states.items() if s == "ready")
        failed = {r: d for r, (s, d) in states.items() if s == "failed"}
        pending = {r: d for r, (s, d) in states.items() if s == "pending"}
        if verdict == "none":
            return [], replicas, f"no live replica serves model {self.model} (see hotserve fleet status)"
        if verdict == "failed":
            named = "; ".join(f"replica {r} failed to prepare version {version}: {d}" for r, d in sorted(failed.items()))
            if opts.min_ready is not None:
                named = (f"only {len(ready) + len(pending)} replica(s) can still prepare version {version}, "
                         f"--min_ready is {opts.min_ready}" + (f"; {named}" if named else ""))
            return ready, replicas, named
        if verdict is None:  # timed out
            if opts.min_ready is not None and len(ready) >= opts.min_ready:
                self.say(f"phase 1: timed out with {len(ready)} of {len(states)} ready (--min_ready "
                         f"{opts.min_ready}); flipping, the rest fail readiness until they have it")
                return ready, replicas, ""
            late = "; ".join(f"{r}: {d}" for r, d in sorted(pending.items()))
            return ready, replicas, (f"timed out after {opts.prepare_timeout:g}s with {len(ready)} of {len(states)} "
                                     f"replica(s) ready; not ready: {late}")
        return ready, replicas, ""

    def _flip(self, version: int, previous: int | None, seen: RoutingState) -> float:
        """Phase 2: the one write. Returns the unix time it was sent."""
        keep_until = time.time() + self.options.keep_previous_seconds

        def fn(st: RoutingState) -> RoutingState:
            now = time.time()
            keep = {v: t for v, t in st.keep.items() if t > now and v != version}
            if previous is not None and previous != version and self.options.keep_previous_seconds > 0:
                keep[previous] = keep_until
            labels = dict(st.labels)
            if "stable" in labels:
                labels["stable"] = version  # a stable label follows the fleet
            if labels.get("canary") == version:
                del labels["canary"]
            return st.with_changes(fleet_target=version, prepare=tuple(v for v in st.prepare if v != version),
                                   keep=keep, pinned=None, labels=labels)

        for _ in range(20):
            state, revision = self.store.read()
            new = fn(state or RoutingState())
            if state is not None and state.pinned is not None:
                self.say(f"phase 2: clearing the fleet-wide pin to version {state.pinned}")
            sent = time.time()
            written = self.store.compare_and_set(new, revision)
            if written is not None:
                self.say(f"phase 2: flipped the fleet to version {version} (one write)")
                return self._committed_at(written, sent)
        raise zk.FleetUnavailable(f"the routing state of {self.model} kept changing under 20 attempts to flip it")

    def _committed_at(self, revision: int, sent: float) -> float:
        """When ZooKeeper applied our write (the znode's mtime, ms), so the skew does not count
        the time this process took to send it; `sent` if another write came in meanwhile."""
        try:
            stat = zk.call(self.client.exists_async(self.store.path), what="read the flip's time")
        except zk.FleetUnavailable:
            return sent
        if stat is None or stat.version + 1 != revision:
            return sent
        return stat.mtime / 1000.0

    def _await_flip(self, version: int, ready: list[str], flip_at: float) -> tuple[float | None, float | None, list[str]]:
        def check(members: dict[str, dict]) -> float | None:
            times = []
            for rid in ready:
                doc = members.get(rid)
                if doc is None:
                    continue  # left the fleet meanwhile: it converges before it is ready again
                m = doc.get("models", {}).get(self.model, {})
                if m.get("serving") != version or m.get("serving_since") is None:
                    return None
                times.append(max(float(m["serving_since"]), flip_at))
            return max(times) - flip_at if times else 0.0

        skew, members = self.view.wait_until(check, self.options.flip_timeout)
        serving_since = [max(float(members[r]["models"][self.model]["serving_since"]), flip_at) for r in ready
                         if r in members and members[r].get("models", {}).get(self.model, {}).get("serving") == version]
        spread = (max(serving_since) - min(serving_since)) if serving_since else None
        lagging = sorted(rid for rid, doc in members.items()
                         if self.model in doc.get("models", {}) and not doc.get("draining")
                         and doc["models"][self.model].get("serving") != version)
        return skew, spread, lagging

    def _confirm_unchanged(self, version: int, started: float) -> RolloutResult:
        def check(members: dict[str, dict]) -> bool | None:
            serving = [doc["models"][self.model].get("serving") == version for doc in members.values()
                       if self.model in doc.get("models", {}) and not doc.get("draining")]
            return True if all(serving) else None

        ok, members = self.view.wait_until(check, self.options.flip_timeout)
        lagging = tuple(sorted(rid for rid, doc in members.items() if self.model in doc.get("models", {})
                               and doc["models"][self.model].get("serving") != version))
        message = f"the fleet already serves version {version} of model {self.model}" + (
            f"; not serving it yet: {', '.join(lagging)}" if lagging else "")
        return RolloutResult(self.model, version, version, "unchanged" if ok else "aborted", message, lagging=lagging)

    # -- bookkeeping ----------------------------------------------------------------------------------
    def _update(self, fn: Callable[[RoutingState], RoutingState]) -> None:
        from hotserve.repository.routing_store import update

        update(self.store, fn)

    def _finish(self, result: RolloutResult, started: float, rollback: bool) -> None:
        def change(r: dict) -> dict:
            history = list(r.get("history", []))
            if result.outcome == "done":
                if result.previous is not None and (not history or history[-1] != result.previous):
                    history.append(result.previous)
                if rollback and len(history) >= 2 and history[-2] == result.version:
                    history.pop()  # going back: the version rolled back from leaves the history
                else:
                    history.append(result.version)
            r.pop("active", None)
            r["history"] = history[-HISTORY_LENGTH:]
            r["last"] = {"version": result.version, "previous": result.previous, "outcome": result.outcome,
                         "rollback": rollback, "message": result.message, "started": started, "finished": time.time(),
                         "prepare_seconds": round(result.prepare_seconds, 4), "by": self.who,
                         "skew_ms": None if result.skew_seconds is None else round(result.skew_seconds * 1000, 2)}
            return r

        write_record(self.client, self.address, self.model, change)
