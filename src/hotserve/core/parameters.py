"""Live parameter updates of one loaded version: revisions, the delta log, replay, rollback.

A `ParameterKeeper` per loaded version owns its revisions:

- **apply** (POST :update_parameters, the learner's log entries): validate the delta whole
  against the servable's tensors, build the next state copy-on-write
  (runtimes/parameters.py), write it to the version's delta log through Storage (data, then the
  commit: durable before the answer), then switch the version's head to a new `Bound` with one
  assignment. Requests already bound to the old revision finish on it (invariant 1); a bad delta
  changes nothing (invariant 2); `expect_revision` makes concurrent writers safe (409).
- **follow / replay**: other processes (workers, fleet replicas, the learner) append to the same
  log; the repository watcher notices new commits and `catch_up` applies them in order. A
  version being loaded replays its log before it serves, resolving rollbacks so only the
  deltas on the path to the served revision are applied: a restarted server converges to the
  same revision.
- **rollback** to an earlier revision is instant while it is within the `keep` revisions whose
  undo data is kept in memory (each as big as its delta); a later revision on the log (roll
  forward) is replayed from disk; anything older than the kept history is rebuilt from the
  version's files (the touched tensors' initial values) and the log.
- **fold**: once every older state drained, table overlays are written into the shared table in
  place (RCU), so lookups stay a plain numpy take and memory stays one table.

All of it runs in the caller's thread (a worker pool thread for the API, the watcher thread when
following, the load pool at load) or the fold thread, never on the event loop; requests take no
lock a delta holds except the version's counter lock, for the head assignment itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from hotserve.core.loaded import Bound, LoadedVersion
from hotserve.errors import Code, HotserveError, InvalidArgument, NotFound
from hotserve.observability.events import BUS, DeltaApplied, DeltaRejected, DeltaReplayed, DeltaReverted, EventBus
from hotserve.repository import manifest
from hotserve.repository.deltas import DELTAS_DIR, DeltaLog, DeltaLogError, Entry, chain_to, encode_updates
from hotserve.repository.publish import publish
from hotserve.repository.storage import Storage, StorageUnavailable
from hotserve.runtimes.base import StateView, updatable
from hotserve.runtimes.parameters import ParamState, TableView, Undo, Update, apply, compose_undo, validate

log = logging.getLogger("hotserve.parameters")

# Revisions whose undo data stays in memory (instant rollback); each costs about its delta's bytes.
KEEP_REVISIONS = 16
# Revision history entries shown in status and metadata.
HISTORY_SHOWN = 50
# One thread folds table overlays for every version of the process (cheap: writes of touched rows).
_FOLDS = ThreadPoolExecutor(1, thread_name_prefix="param-fold")


class Conflict(HotserveError):
    def __init__(self, message: str) -> None:
        super().__init__(message, Code.ABORTED)


@dataclass
class _Rev:
    """One revision on the served chain: how to undo it (None once beyond the kept history)."""

    revision: int
    parent: int
    undo: Undo | None
    info: dict


@dataclass(frozen=True)
class Result:
    model: str
    version: int
    revision: int
    applied_ms: float

    def doc(self) -> dict:
        return {"model": self.model, "version": self.version, "revision": self.revision,
                "applied_ms": round(self.applied_ms, 3)}


def _updates(raw) -> list[Update]:
    return [u if isinstance(u, Update) else Update(u[0], u[1], u[2]) for u in raw]


class ParameterKeeper:
    def __init__(self, model: str, version: int, servable, storage: Storage, version_path: str,
                 bus: EventBus = BUS, keep: int = KEEP_REVISIONS) -> None:
        self.model = model
        self.version = version
        self.servable = servable
        self.reason = updatable(servable)  # '' when the runtime takes deltas
        self.specs = getattr(servable, "param_specs", None) or {}
        self.log = DeltaLog(storage, version_path)
        self.bus = bus
        self.keep = keep
        self.state: ParamState | None = getattr(servable, "current", None) if not self.reason else None
        self.revision = 0
        self.max_revision = 0
        self.applied_seq = 0
        self.chain: list[_Rev] = []  # the served revision's ancestry (oldest kept first), head last
        self.parents: dict[int, int] = {}  # every revision on the log -> its parent
        self.history: deque[dict] = deque(maxlen=HISTORY_SHOWN)
        self.lv: LoadedVersion | None = None
        self._draining: set[Bound] = set()
        self._lock = threading.RLock()  # deltas, rollbacks, catch-up and folds of this version, one at a time

    # -- wiring -------------------------------------------------------------------------------
    def view(self):
        return self.servable if self.state is None else StateView(self.servable, self.state)

    def attach(self, lv: LoadedVersion) -> None:
        """The loaded version whose head this keeper switches (after the load's replay)."""
        self.lv = lv
        lv.params = self
        lv.head.on_drained = self._on_drained

    # -- reading ------------------------------------------------------------------------------
    def describe(self) -> dict:
        """For status and metadata: the revision, whether deltas are taken, the history."""
        doc = {"revision": self.revision, "updatable": not self.reason}
        if self.reason:
            doc["reason"] = self.reason
        else:
            doc["tensors"] = [s.describe() for s in self.specs.values()][:200]
            doc["rollback_to"] = [r.parent for r in self.chain if r.undo is not None]
            doc["history"] = list(self.history)[::-1]
        return doc

    # -- applying -----------------------------------------------------------------------------
    def rejected(self, exc: HotserveError, source: str) -> None:
        """A delta refused before it reached apply() (its body could not be parsed)."""
        self.bus.publish(DeltaRejected(self.model, self.version, exc.code.value, exc.message, source))

    def apply(self, raw_updates, expect_revision: int | None = None, source: str = "api",
              received: float | None = None) -> Result:
        """Validate, build, log durably, switch. Raises (changing nothing) on any bad input."""
        t0 = received if received is not None else time.perf_counter()
        try:
            if self.reason:
                raise HotserveError(f"model {self.model} version {self.version} takes no parameter deltas: {self.reason}",
                                    Code.FAILED_PRECONDITION)
            updates = validate(self.specs, _updates(raw_updates))
            payload = encode_updates(updates)
            with self._lock:
                for _ in range(20):
                    self._catch_up_locked("follow")
                    if expect_revision is not None and expect_revision != self.revision:
                        raise Conflict(f"model {self.model} version {self.version} serves revision {self.revision}, "
                                       f"expect_revision was {expect_revision}; read the revision and build the delta "
                                       "on it")
                    tensors, undo, extra = self._build(updates)
                    revision = self.max_revision + 1
                    rows = sum(u.row_count for u in updates)
                    nbytes = sum(u.nbytes for u in updates)
                    names = tuple(u.name for u in updates)
                    entry = self.log.append(self.applied_seq + 1, "delta", revision, self.revision, payload, source,
                                            names, rows, nbytes)
                    if entry is not None:
                        break  # else another process took this sequence number: catch up and build again
                else:
                    raise HotserveError("could not append to the delta log: other writers kept taking the next entry",
                                        Code.UNAVAILABLE)
                self._switch_delta(entry, tensors, undo, extra)
                ms = (time.perf_counter() - t0) * 1000.0
                self.bus.publish(DeltaApplied(self.model, self.version, revision, entry.parent, names, rows, nbytes, ms,
                                              source, entry.seq))
                return Result(self.model, self.version, revision, ms)
        except HotserveError as exc:
            self.bus.publish(DeltaRejected(self.model, self.version, exc.code.value, exc.message, source))
            raise
        except StorageUnavailable as exc:
            self.bus.publish(DeltaRejected(self.model, self.version, "UNAVAILABLE", str(exc), source))
            raise HotserveError(f"the delta could not be written to the repository ({exc}); nothing changed",
                                Code.UNAVAILABLE) from exc

    def _build(self, updates: list[Update]) -> tuple[dict, Undo, object]:
        state = self.state
        hook = getattr(self.servable, "build_with_hook", None)
        tensors = hook(state, updates) if hook is not None else None
        if tensors is None:
            tensors, undo = apply(state, updates)
        else:
            undo = Undo(whole={n: v for n, v in state.tensors.items() if tensors.get(n) is not v})
        touched = {u.name for u in updates} | set(undo.whole)
        extra = self.servable.state_extra(state, tensors, touched)
        return tensors, undo, extra

    def _switch_delta(self, entry: Entry, tensors: dict, undo: Undo, extra) -> None:
        info = entry.info()
        self.chain.append(_Rev(entry.revision, entry.parent, undo, info))
        self.parents[entry.revision] = entry.parent
        self.max_revision = max(self.max_revision, entry.revision)
        self.applied_seq = entry.seq
        self.history.append(info)
        self._trim()
        self._switch(ParamState(tensors, extra), entry.revision)

    def _switch(self, state: ParamState, revision: int) -> None:
        self.state = state
        self.revision = revision
        self.servable.current = state
        lv = self.lv
        if lv is None:  # replaying at load: the version is not routed yet
            return
        new = Bound(lv, revision, StateView(self.servable, state), state)
        new.on_drained = self._on_drained
        old = lv.switch(new)  # the one assignment
        self._draining = {b for b in self._draining if b.refs}
        if old.refs:
            self._draining.add(old)
        self._fold_soon()

    def _trim(self) -> None:
        kept = [r for r in self.chain if r.undo is not None]
        for r in kept[:max(0, len(kept) - self.keep)]:
            r.undo = None
        # Entries with no undo are only ancestry: keep the list short.
        while len(self.chain) > self.keep and self.chain[0].undo is None:
            self.chain.pop(0)

    # -- following the log ----------------------------------------------------------------------
    def catch_up(self, at: str = "follow") -> int:
        """Apply log entries other processes committed; returns how many."""
        if self.reason:
            return 0
        with self._lock:
            return self._catch_up_locked(at)

    def _catch_up_locked(self, at: str) -> int:
        t0 = time.perf_counter()
        entries = self.log.entries_after(self.applied_seq)
        if not entries:
            return 0
        for e in entries:
            try:
                if e.kind == "delta":
                    self.parents[e.revision] = e.parent
                    if e.parent != self.revision:
                        self._go_to(e.parent, e.seq)
                    updates = validate(self.specs, _updates(self.log.read_updates(e)))
                    tensors, undo, extra = self._build(updates)
                    self._switch_delta(e, tensors, undo, extra)
                    self.bus.publish(DeltaApplied(self.model, self.version, e.revision, e.parent, e.tensors, e.rows,
                                                  e.nbytes, max(0.0, time.time() - e.time) * 1000.0, e.source, e.seq))
                elif e.kind == "rollback":
                    before = self.revision
                    self._go_to(e.revision, e.seq)
                    self.bus.publish(DeltaReverted(self.model, self.version, e.revision, before,
                                                   e.doc.get("reason", "rollback in the log"), "log"))
                self.applied_seq = e.seq
                self.max_revision = max(self.max_revision, e.revision)
            except (HotserveError, DeltaLogError) as exc:
                # A bad entry (written by hand, corrupt) is skipped whole; what serves is unchanged.
                self.applied_seq = e.seq
                self.bus.publish(DeltaRejected(self.model, self.version, getattr(getattr(exc, "code", None), "value", "DATA_LOSS"),
                                               f"log entry {e.seq}: {exc}", "log"))
        self.bus.publish(DeltaReplayed(self.model, self.version, self.revision, len(entries),
                                       time.perf_counter() - t0, at))
        return len(entries)

    def replay(self) -> int:
        """At load, before the version serves: apply the log's path to its served revision
        (branches abandoned by rollbacks skipped). Returns the entries read."""
        if self.reason:
            return 0
        with self._lock:
            t0 = time.perf_counter()
            seqs = self.log.commits()
            if not seqs:
                return 0
            entries = [self.log.entry(s) for s in seqs]
            for e in entries:
                if e.kind == "delta":
                    self.parents[e.revision] = e.parent
            self.max_revision = max(e.revision for e in entries)
            try:
                target, chain = chain_to(entries)
                for e in chain:
                    updates = validate(self.specs, _updates(self.log.read_updates(e)))
                    tensors, undo, extra = self._build(updates)
                    self._switch_delta(e, tensors, undo, extra)
            except (HotserveError, DeltaLogError) as exc:
                # Serve the last revision that replayed cleanly; the log is not retried entry by entry.
                self.bus.publish(DeltaRejected(self.model, self.version, getattr(getattr(exc, "code", None), "value",
                                                                                  "DATA_LOSS"),
                                               f"replay stopped at revision {self.revision}: {exc}", "log"))
            self.applied_seq = entries[-1].seq
            self._fold_now()
            self.bus.publish(DeltaReplayed(self.model, self.version, self.revision, len(entries),
                                           time.perf_counter() - t0, "load"))
            return len(entries)

    # -- reading another revision (the delta guard) -----------------------------------------------
    def locked(self):
        """Hold off deltas and folds while states from view_of() are read."""
        return self._lock

    def view_of(self, revision: int):
        """The servable seen through `revision` without serving it: the head, or an ancestor
        within the kept history (built copy-on-write from the undo data); None if further back.
        Read it under locked(): a fold of a later delta does not know about this state."""
        with self._lock:
            if revision == self.revision:
                return StateView(self.servable, self.state)
            undos = []
            rev = self.revision
            for r in reversed(self.chain):
                if rev == revision:
                    break
                if r.revision != rev or r.undo is None:
                    return None
                undos.append(r.undo)
                rev = r.parent
            if rev != revision:
                return None
            tensors, _, extra = self._build(compose_undo(undos))
            return StateView(self.servable, ParamState(tensors, extra))

    # -- rollback -------------------------------------------------------------------------------
    def rollback(self, target: int, reason: str = "operator", source: str = "operator") -> Result:
        """Serve revision `target` now (durably: a rollback entry in the log first)."""
        t0 = time.perf_counter()
        if self.reason:
            raise HotserveError(f"model {self.model} version {self.version} takes no parameter deltas: {self.reason}",
                                Code.FAILED_PRECONDITION)
        with self._lock:
            self._catch_up_locked("follow")
            before = self.revision
            if target == before:
                return Result(self.model, self.version, target, 0.0)
            if target != 0 and target not in self.parents:
                raise NotFound(f"model {self.model} version {self.version} has no revision {target}; revisions: "
                               f"{sorted({0, *self.parents})}")
            plan = self._plan_path(target)  # raises before anything is written if it cannot be done
            for _ in range(20):
                entry = self.log.append(self.applied_seq + 1, "rollback", target, before, source=source,
                                        extra={"reason": reason})
                if entry is not None:
                    break
                self._catch_up_locked("follow")
                plan = self._plan_path(target)
            else:
                raise HotserveError("could not append to the delta log", Code.UNAVAILABLE)
            self._walk(plan)
            self.applied_seq = entry.seq
            self.history.append(entry.info())
            ms = (time.perf_counter() - t0) * 1000.0
            self.bus.publish(DeltaReverted(self.model, self.version, target, before, reason, source))
            return Result(self.model, self.version, target, ms)

    def _ancestors(self, rev: int) -> list[int]:
        out = [rev]
        while rev != 0:
            rev = self.parents.get(rev, 0)
            out.append(rev)
        return out

    def _plan_path(self, target: int) -> tuple[int, list[int]]:
        """(the common ancestor to undo back to, the revisions to replay from disk after it)."""
        up = self._ancestors(target)
        mine = set(self._ancestors(self.revision))
        lca = next(r for r in up if r in mine)
        forward = up[:up.index(lca)][::-1]
        if lca != self.revision:
            revs = [r.revision for r in self.chain if r.undo is not None]
            # Undo chain: every revision from the head down to just above lca must be kept.
            needed = self._ancestors(self.revision)
            needed = needed[:needed.index(lca)]
            if any(r not in revs for r in needed):
                if getattr(self.servable, "initial_values", None) is None:
                    raise HotserveError(
                        f"revision {target} of model {self.model} version {self.version} is further back than the "
                        f"{self.keep} revisions kept in memory, and this runtime cannot re-read its initial values; "
                        "roll back to a kept revision, or publish a version built from the one you want",
                        Code.FAILED_PRECONDITION)
                return -1, [target]  # beyond the kept history: rebuilt from the version's files and the log
        return lca, forward

    def _walk(self, plan: tuple[int, list[int]]) -> None:
        lca, forward = plan
        if lca == -1:
            self._rebuild_from_disk(forward[0])
            return
        if lca != self.revision:
            self._undo_to(lca)
        by_rev = {}
        if forward:
            for s in self.log.commits():
                e = self.log.entry(s)
                if e.kind == "delta":
                    by_rev[e.revision] = e
        for rev in forward:
            e = by_rev[rev]
            updates = validate(self.specs, _updates(self.log.read_updates(e)))
            tensors, undo, extra = self._build(updates)
            seq = self.applied_seq
            self._switch_delta(e, tensors, undo, extra)
            self.applied_seq = seq  # replaying an old entry does not move the log position
            self.history.pop()  # already in history when first applied

    def _rebuild_from_disk(self, target: int) -> None:
        """A revision older than the kept history: every row (or tensor) the served revision's or
        the target's deltas touched goes back to the version's file values, then the target's
        deltas are replayed from the log, as one copy-on-write step (reading the touched tensors'
        initial values once, from the version's files)."""
        entries = [self.log.entry(s) for s in self.log.commits()]
        _, head_chain = chain_to(entries, self.revision)
        _, target_chain = chain_to(entries, target)
        logged = {e.seq: [Update(*u) for u in self.log.read_updates(e)] for e in {*head_chain, *target_chain}}
        whole: set[str] = set()
        rows: dict[str, list] = {}
        for e in {*head_chain, *target_chain}:
            for u in logged[e.seq]:
                if u.rows is None:
                    whole.add(u.name)
                else:
                    rows.setdefault(u.name, []).append(u.rows)
        initial = self.servable.initial_values(sorted(whole | set(rows)))
        reset = [Update(n, initial[n]) for n in sorted(whole)]
        for n, parts in rows.items():
            if n not in whole:
                r = np.unique(np.concatenate(parts))
                reset.append(Update(n, np.asarray(initial[n])[r], r))
        del initial
        saved = self.state
        try:
            if reset:
                tensors, _, extra = self._build(reset)
                self.state = ParamState(tensors, extra)
            for e in target_chain:
                tensors, _, extra = self._build(logged[e.seq])
                self.state = ParamState(tensors, extra)
        except BaseException:
            self.state = saved
            raise
        new_state, self.state = self.state, saved
        self.chain = [_Rev(e.revision, e.parent, None, e.info()) for e in target_chain][-self.keep:]
        self._switch(new_state, target)

    def _undo_to(self, target: int) -> None:
        undos = []
        rev = self.revision
        while rev != target:  # _plan_path checked every revision on the way keeps its undo
            r = self.chain.pop()
            undos.append(r.undo)
            rev = r.parent
        updates = compose_undo(undos)
        if updates:
            tensors, _, extra = self._build(updates)
        else:
            tensors, extra = self.state.tensors, self.state.extra
        self._switch(ParamState(tensors, extra), target)

    def _go_to(self, target: int, seq: int) -> None:
        self._walk(self._plan_path(target))

    # -- folding table overlays (RCU) -----------------------------------------------------------
    def _on_drained(self, b: Bound) -> None:
        self._draining.discard(b)
        if self.state is not None and self.state.overlay_rows():
            self._fold_soon()

    def _fold_soon(self) -> None:
        if self.state is not None and self.state.overlay_rows():
            _FOLDS.submit(self._fold_if_drained)

    def _fold_if_drained(self) -> None:
        with self._lock:
            lv = self.lv
            if lv is None or self.state is None or not self.state.overlay_rows():
                return
            if any(b.refs for b in list(self._draining)) or lv.head.state is not self.state:
                return  # an older state is still being read: its last release schedules us again
            self._fold_now()

    def _fold_now(self) -> None:
        """Write the head's overlays into the tables (callers made sure nobody reads older states)."""
        tensors = {n: (v.store.fold(v) if isinstance(v, TableView) else v) for n, v in self.state.tensors.items()}
        self._switch(ParamState(tensors, self.state.extra), self.revision)


# -- the management entry points --------------------------------------------------------------
def keeper_of(mm, version: int) -> ParameterKeeper:
    """The keeper of a loaded version of model manager `mm`; NotFound if not loaded."""
    for lv in mm.loaded():
        if lv.version == version and lv.params is not None:
            return lv.params
    loaded = sorted(mm.loaded_versions())
    raise NotFound(f"model {mm.name!r} version {version} is not loaded; loaded versions: {loaded or 'none'}")


def describe_loaded(mm, history: bool = True) -> dict[int, dict]:
    """version -> its parameters' description (revision, updatable, history), loaded versions only."""
    out = {}
    for lv in mm.loaded():
        if lv.params is not None:
            doc = lv.params.describe()
            if not history:
                doc.pop("history", None)
                doc.pop("tensors", None)
            out[lv.version] = doc
    return out


def rollback(mm, version: int, revision: int) -> dict:
    """Serve revision `revision` of loaded version `version` now."""
    return keeper_of(mm, version).rollback(revision).doc()


def compact(mm, version: int | None = None) -> dict:
    """Fold a loaded version's deltas into a new full version (published through the repository
    like any version: stage + commit, lineage naming the version and revision it came from)."""
    if version is None:
        default = mm.route.table.default
        if default is None:
            raise NotFound(f"model {mm.name!r} serves no version to compact")
        version = default.version
    keeper = keeper_of(mm, version)
    export = getattr(keeper.servable, "export_state", None)
    if keeper.reason or export is None:
        raise HotserveError(f"model {mm.name} version {version} cannot be compacted: "
                            f"{keeper.reason or 'its runtime cannot write its parameters into a version directory'}",
                            Code.FAILED_PRECONDITION)
    path = mm.storage.join(mm.base_path, str(version))
    src = mm.storage.local_dir(path)
    tmp = tempfile.mkdtemp(prefix=f"hotserve-compact-{mm.name}-")
    try:
        for root, dirs, files in os.walk(src):
            rel = os.path.relpath(root, src)
            dirs[:] = [d for d in dirs if not (rel == "." and d == DELTAS_DIR)]
            for f in files:
                if rel == "." and f == manifest.MANIFEST_NAME:
                    continue
                os.makedirs(os.path.join(tmp, rel), exist_ok=True)
                shutil.copy2(os.path.join(root, f), os.path.join(tmp, rel, f))
        with keeper._lock:  # the tables are read whole: no fold may write them meanwhile
            revision = keeper.revision
            export(keeper.state, src, tmp)
        lineage = {"source": "compact", "model": mm.name, "parent": version, "revision": revision,
                   "compacted_unix": time.time()}
        new_version, _ = publish(tmp, mm.base_path, storage=mm.storage, lineage=lineage)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        mm.storage.release_local_dir(path)
    return {"model": mm.name, "version": new_version, "from": {"version": version, "revision": revision}}


def parse_revision_ref(text: str) -> tuple[int, int]:
    """'7.3' -> (7, 3)."""
    v, sep, r = str(text).partition(".")
    if not sep or not v.isdigit() or not r.isdigit():
        raise InvalidArgument(f"a revision is VERSION.REVISION like 7.3, got {text!r}")
    return int(v), int(r)
