"""The manager: per model, decide which versions should be live and make it so.

Each model has one reconcile thread fed by its repository watcher and by routing changes
(config reloads, labels, pins, rollbacks, canary decisions). A reconcile computes the wanted
set (the policy's versions plus every labelled version), loads what is missing in the shared
bounded load pool (never on the event loop), swaps the route table in one assignment once a
version has passed its gates, and only then retires versions nobody wants; a retired version
drains in the unload pool and is unloaded after its last in-flight request.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hotserve.batching import Batcher, BatchingParameters
from hotserve.core import canary
from hotserve.core.config import CanaryConfig, ModelConfig
from hotserve.core.gates import run_file_gates
from hotserve.core.loaded import LoadedVersion
from hotserve.core.memory import MemoryBudget, rss_of
from hotserve.core.router import Route, RouteTable
from hotserve.core.states import VersionState, VersionStatus
from hotserve.core.validation import validate, warm_up
from hotserve.errors import Code, HotserveError, InvalidArgument, LoadError, NotFound, Unavailable
from hotserve.observability import metrics
from hotserve.repository import manifest, routing_state
from hotserve.repository.scanner import Fingerprint, ScanResult, VersionInfo, VersionScanner
from hotserve.repository.storage import StorageUnavailable, normalize_base_path, storage_for
from hotserve.repository.watcher import RepositoryWatcher
from hotserve.runtimes.base import Servable
from hotserve.runtimes.registry import RuntimeOptions, load_servable

log = logging.getLogger("hotserve.manager")

# Ended versions that left the repository are kept in status this many at most, newest first,
# so operators can still read why a version failed.
_ENDED_HISTORY = 10
MEMORY_POLICIES = ("wait", "unload_first", "refuse")
_DONE = {"rollback": "rolled back", "promote": "promoted"}
# Requests larger than this always go to the worker pool, even for a cheap model.
INLINE_MAX_BYTES = 16 * 1024


@dataclass(frozen=True)
class ManagerOptions:
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    settle_seconds: float = 1.0
    poll_wait_seconds: float = 1.0
    num_load_threads: int = 1
    num_unload_threads: int = 2
    use_inotify: bool = True
    # Seconds a shutdown waits for in-flight requests before unloading anyway.
    drain_timeout_seconds: float = 30.0
    memory_budget_bytes: int | None = None
    memory_policy: str = "wait"
    batching: BatchingParameters | None = None  # --enable_batching for every model without its own setting
    # With --num_workers, only worker 0 runs canary analysis; the others follow its decisions
    # through the routing state file.
    canary_analysis: bool = True
    # --inference_threading=auto: a model whose recent median inference is under this many
    # microseconds may run small requests on the event loop (0: never).
    inline_max_us: float = 0.0

    def __post_init__(self) -> None:
        if self.memory_policy not in MEMORY_POLICIES:
            raise ValueError(f"memory policy must be one of {MEMORY_POLICIES}, got {self.memory_policy!r}")


def _ev(event: str, model: str, version: int | None = None) -> dict:
    extra = {"event": event, "model": model}
    if version is not None:
        extra["version"] = version
    return extra


class ModelManager:
    def __init__(
        self,
        config: ModelConfig,
        options: ManagerOptions,
        load_pool: ThreadPoolExecutor,
        unload_pool: ThreadPoolExecutor,
        budget: MemoryBudget,
    ) -> None:
        self.name = config.name
        self.config = config
        self.base_path = normalize_base_path(config.base_path)
        self.options = options
        self.route = Route(self.name)
        self.outage: str | None = None
        # True while the default version's recent median inference is cheap enough to run on
        # the event loop (--inference_threading=auto); read by front ends without a lock.
        self.inline_ok = False
        self._load_pool = load_pool
        self._unload_pool = unload_pool
        self._budget = budget
        self._loaded: dict[int, LoadedVersion] = {}
        self._failed: dict[int, Fingerprint] = {}
        self._statuses: dict[int, VersionStatus] = {}
        self._status_lock = threading.Lock()
        self._pending: ScanResult | None = None
        self._last_scan = ScanResult(complete={})
        # Set by an explicit unload (repository API): nothing serves until an explicit load.
        self._unloaded = False
        self._reconciles = 0
        self._cv = threading.Condition()
        self._stopping = False
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"manager-{self.name}", daemon=True)
        # Routing intent: what operators, config and canary analysis asked for. Guarded by _cv.
        self.policy = config.policy
        self.canary_cfg: CanaryConfig | None = config.canary
        self.labels: dict[str, int] = dict(config.labels)
        self.pinned: int | None = None
        self.canary_weight: float = config.canary.weight if config.canary else 0.0
        self._rolled_back: dict[int, Fingerprint] = {}
        self._canary_since: float | None = None
        self._canary_held = False
        self._default_history: list[int] = []
        state = routing_state.load(self.base_path)
        if state is not None:
            self._adopt(state)
            log.info("model %s: restored routing state (labels %s, pinned %s, rolled back %s)", self.name,
                     self.labels, self.pinned, sorted(self._rolled_back))
        self.batcher = self._make_batcher(config)
        self._storage = storage_for(config.base_path)
        self.scanner = VersionScanner(self._storage, self.base_path, options.settle_seconds, self.name)
        self.watcher = RepositoryWatcher(
            self.scanner, self._on_scan, self._on_outage, options.poll_wait_seconds, options.use_inotify,
            on_routing_change=self._on_routing_change,
        )

    def _adopt(self, state: routing_state.RoutingState) -> None:
        self.labels, self.pinned, self._rolled_back = dict(state.labels), state.pinned, dict(state.rolled_back)
        if state.canary_weight is not None:
            self.canary_weight = state.canary_weight
        self._unloaded = state.unloaded

    def _on_routing_change(self) -> None:
        """Another process (a sibling worker) changed the routing state file: follow it."""
        with self._cv:
            # Read under the lock our own writes hold, so a stale read cannot undo a newer change.
            state = routing_state.load(self.base_path)
            if state is None:
                return
            mine = (self.labels, self.pinned, self._rolled_back, self._unloaded)
            if (state.labels, state.pinned, state.rolled_back, state.unloaded) == mine and (
                    state.canary_weight is None or state.canary_weight == self.canary_weight):
                return  # our own write
            self._adopt(state)
        log.info("model %s: routing changed by another worker: labels %s, pinned %s", self.name, self.labels,
                 self.pinned, extra=_ev("routing_reload", self.name))
        self._trigger()

    def _make_batcher(self, config: ModelConfig) -> Batcher | None:
        params = self.options.batching if config.batching is None else config.batching
        if not isinstance(params, BatchingParameters):
            return None
        log.info("model %s: dynamic batching on (max_batch_size %d, batch_timeout_micros %d, %d batch thread(s))",
                 self.name, params.max_batch_size, params.batch_timeout_micros, params.num_batch_threads)
        return Batcher(self.name, params)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout=10)
        self.route.table = RouteTable()
        for lv in list(self._loaded.values()):
            lv.retire()
            if not lv.wait_drained(self.options.drain_timeout_seconds):
                log.warning("model %s version %d: unloading with %d request(s) still in flight at shutdown",
                            self.name, lv.version, lv.in_flight)
            self._unload(lv)
        self._loaded.clear()
        if self.batcher is not None:
            self.batcher.stop()
        for v in list(self._statuses):
            metrics.forget_version(self.name, v)

    # -- status (read by front ends) --------------------------------------------------------
    def statuses(self, version: int | None = None) -> list[VersionStatus]:
        with self._status_lock:
            if version is not None:
                if version not in self._statuses:
                    raise NotFound(f"Could not find version {version} of model {self.name}")
                return [self._statuses[version]]
            return [self._statuses[v] for v in sorted(self._statuses, reverse=True)]

    def is_ready(self, version: int | None = None, label: str | None = None) -> bool:
        table = self.route.table
        if label is not None:
            return label in table.labels
        return table.default is not None if version is None else version in table.versions

    def label_version(self, label: str) -> int:
        """The version a label routes to now; NotFound if it routes nowhere."""
        lv = self.route.table.labels.get(label)
        if lv is None:
            raise NotFound(f"label {label!r} of model {self.name!r} is not assigned to an available version")
        return lv.version

    def runs_inline(self, request_bytes: int) -> bool:
        """Whether a request this large may run on the event loop (--inference_threading=auto)."""
        return self.inline_ok and request_bytes <= INLINE_MAX_BYTES

    @property
    def explicitly_unloaded(self) -> bool:
        return self._unloaded

    def routing(self) -> dict:
        """What is being served and why, for the management API and the dashboard."""
        t = self.route.table
        return {
            "model": self.name,
            "default_version": t.default.version if t.default else None,
            "served_versions": sorted(t.versions),
            "labels": {k: v.version for k, v in sorted(t.labels.items())},
            "requested_labels": dict(sorted(self.labels.items())),
            "pinned": self.pinned,
            "canary": {"version": t.canary.version, "weight": t.canary_weight} if t.canary else None,
            "rolled_back": sorted(self._rolled_back),
            "inference_threading": "event loop (small requests)" if self.inline_ok else "worker pool",
        }

    # -- repository events ------------------------------------------------------------------
    def _on_scan(self, result: ScanResult) -> None:
        with self._cv:
            self._pending = result
            self._idle.clear()
            self._cv.notify()

    def _on_outage(self, message: str) -> None:
        self.outage = message
        metrics.STORAGE_OUTAGES.inc((self.name,))
        log.warning("model %s: storage unavailable (%s); keeping served versions %s until it is back",
                    self.name, message, sorted(self._loaded) or "none", extra=_ev("storage_outage", self.name))

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stopping:
                    self._idle.set()
                    self._cv.wait()
                if self._stopping:
                    return
                scan, self._pending = self._pending, None
            try:
                self._reconcile(scan)
            except Exception:
                log.exception("model %s: reconcile failed; served versions unchanged", self.name)
            with self._cv:
                self._reconciles += 1
                self._cv.notify_all()

    def _trigger(self) -> int:
        """Reconcile again with the last scan (routing changed); returns the count to wait past."""
        with self._cv:
            seen = self._reconciles
            if self._pending is None:
                self._pending = self._last_scan
            self._idle.clear()
            self._cv.notify_all()
            return seen

    def _wait_reconciled(self, after: int, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._reconciles > after and self._pending is None, timeout)

    def wait_idle(self, timeout: float) -> bool:
        """True once the reconcile thread has nothing pending (for tools and tests)."""
        return self._idle.wait(timeout)

    # -- routing changes (config, management API, canary) -----------------------------------
    def _persist(self) -> None:
        routing_state.save(self.base_path, routing_state.RoutingState(
            dict(self.labels), self.pinned, dict(self._rolled_back),
            self.canary_weight if self.canary_cfg is None or self.canary_weight != self.canary_cfg.weight else None,
            self._unloaded))

    def update_config(self, config: ModelConfig) -> None:
        """A reloaded config for this model (same base path): new policy, labels, canary."""
        old_batcher = None
        with self._cv:
            labels_changed = config.labels != self.config.labels
            if config.batching != self.config.batching:
                # New requests bind to versions that use the new batcher; old batches finish.
                old_batcher, self.batcher = self.batcher, self._make_batcher(config)
                for lv in self._loaded.values():
                    lv.batcher = self.batcher
            self.config, self.policy, self.canary_cfg = config, config.policy, config.canary
            if labels_changed:
                self.labels = dict(config.labels)
            if config.canary is not None:
                self.canary_weight = config.canary.weight
            self._persist()
        if old_batcher is not None:
            threading.Thread(target=old_batcher.stop, daemon=True).start()
        self._trigger()

    def set_labels(self, changes: dict[str, int | None], timeout: float = 60.0) -> dict:
        """Move (or with None remove) labels; a label moves once its version is AVAILABLE."""
        complete = self._last_scan.complete
        for label, version in changes.items():
            if not label:
                raise InvalidArgument("label names must be non-empty")
            if version is not None and version not in complete:
                raise NotFound(f"model {self.name!r} has no complete version {version} to label {label!r}; "
                               f"complete versions: {sorted(complete)}")
        with self._cv:
            for label, version in changes.items():
                if version is None:
                    self.labels.pop(label, None)
                else:
                    self.labels[label] = version
                    self._rolled_back.pop(version, None)  # labelling it again is an explicit choice
            self._persist()
        return self._apply(timeout, [v for v in changes.values() if v is not None])

    def set_canary(self, version: int | None, weight: float | None, timeout: float = 60.0) -> dict:
        if weight is not None and not 0 <= weight <= 100:
            raise InvalidArgument(f"canary weight is a percentage from 0 to 100, got {weight}")
        with self._cv:
            if weight is not None:
                self.canary_weight = float(weight)
            if version is not None and self.labels.get("stable") in (None, version):
                # Canarying needs a stable side: the version serving now, or if that is the canary
                # itself, the newest other loaded version.
                default = self.route.table.default
                others = sorted((v for v in self._loaded if v != version), reverse=True)
                if default is not None and default.version != version:
                    self.labels["stable"] = default.version
                elif others:
                    self.labels["stable"] = next((v for v in others if v < version), others[0])
                else:
                    raise InvalidArgument(f"model {self.name!r}: a canary needs another loaded version as stable; "
                                          f"only version {version} is loaded")
        if version is None:
            with self._cv:
                self.labels.pop("canary", None)
                self._persist()
            return self._apply(timeout, [])
        return self.set_labels({"canary": version}, timeout)

    def pin(self, version: int | None, timeout: float = 60.0) -> dict:
        if version is not None and version not in self._last_scan.complete:
            raise NotFound(f"model {self.name!r} has no complete version {version} to pin; "
                           f"complete versions: {sorted(self._last_scan.complete)}")
        with self._cv:
            self.pinned = version
            if version is not None:
                self._rolled_back.pop(version, None)
            self._persist()
        return self._apply(timeout, [version] if version is not None else [])

    def rollback(self, to: int | None = None, timeout: float = 60.0) -> dict:
        """Serve `to` (default: the version served before the current one) and keep the current
        one out until its directory changes. Pins the target so newer versions do not go live
        until the pin is cleared. Instant when the target is still loaded."""
        current = self.route.table.default
        complete = self._last_scan.complete
        if to is None:
            older = [v for v in reversed(self._default_history) if current is None or v != current.version]
            older = [v for v in older if v in complete] or sorted(
                (v for v in complete if current is None or v < current.version), reverse=True)
            if not older:
                raise NotFound(f"model {self.name!r} has no earlier complete version to roll back to")
            to = older[0]
        if to not in complete:
            raise NotFound(f"model {self.name!r} has no complete version {to}; complete versions: {sorted(complete)}")
        with self._cv:
            if current is not None and current.version != to and current.version in complete:
                self._rolled_back[current.version] = complete[current.version].fingerprint
            self.pinned = to
            self._rolled_back.pop(to, None)
            for label, v in list(self.labels.items()):
                if current is not None and v == current.version:
                    if label == "canary":
                        del self.labels[label]
                    else:
                        self.labels[label] = to
            self._persist()
        metrics.ROLLBACKS.inc((self.name, "manual"))
        log.warning("model %s: rollback from version %s to %d requested", self.name,
                    current.version if current else None, to, extra=_ev("rollback", self.name, to))
        return self._apply(timeout, [to])

    def _apply(self, timeout: float, must_be_available: list[int]) -> dict:
        seen = self._trigger()
        if not self._wait_reconciled(seen, timeout):
            raise Unavailable(f"model {self.name!r}: the change did not finish within {timeout:g}s; it continues in the background")
        for v in must_be_available:
            if v not in self._loaded:
                st = self._statuses.get(v)
                why = st.error_message if st and st.error_message else "it did not load"
                raise Unavailable(f"model {self.name!r} version {v} is not available: {why}")
        return self.routing()

    # -- explicit load / unload (Triton's repository extension) -----------------------------
    def request_load(self, timeout: float = 60.0) -> int:
        """Serve again after an unload and pick up the newest complete version now; blocks
        until it is AVAILABLE and returns it. Raises if nothing could be made available."""
        try:
            scan = self.watcher.scan_now()
        except StorageUnavailable as exc:
            raise Unavailable(f"model {self.name!r} could not be loaded: {exc}") from None
        with self._cv:
            self._unloaded = False
            self._persist()
            seen = self._reconciles
            self._pending = scan
            self._cv.notify()
        if not self._wait_reconciled(seen, timeout):
            raise Unavailable(f"model {self.name!r}: no load finished within {timeout:g}s")
        default = self.route.table.default
        if default is None:
            reason = self.outage or "; ".join(
                f"version {st.version}: {st.error_message}" for st in self.statuses() if st.error_message
            ) or f"no complete version under {self.base_path}"
            raise Unavailable(f"model {self.name!r} could not be loaded: {reason}")
        return default.version

    def request_unload(self, timeout: float = 60.0) -> None:
        """Stop routing to every version; returns once their in-flight requests drained."""
        draining = list(self._loaded.values())
        with self._cv:
            self._unloaded = True
            self._persist()
        self._wait_reconciled(self._trigger(), timeout)
        for lv in draining:
            lv.wait_drained(timeout)

    # -- reconcile --------------------------------------------------------------------------
    def _reconcile(self, scan: ScanResult) -> None:
        self.outage = None
        self._last_scan = scan
        if self._unloaded:
            if self.route.table.versions:
                self.route.table = RouteTable()
                log.info("model %s: unloaded on request; serving nothing until loaded again", self.name,
                         extra=_ev("model_unloaded", self.name))
            for v in sorted(self._loaded):
                self._retire(self._loaded.pop(v))
            return
        complete = scan.complete
        with self._cv:
            for table in (self._failed, self._rolled_back):
                for v, fp in list(table.items()):
                    info = complete.get(v)
                    if info is None or info.fingerprint != fp:
                        del table[v]  # the directory changed: the version may serve again
        while True:
            desired, wanted = self._wanted(complete)
            if not wanted:
                if self._loaded:
                    log.warning("model %s: no loadable version in %s; keeping served versions %s",
                                self.name, self.base_path, sorted(self._loaded))
                return
            missing = sorted(wanted - self._loaded.keys(), reverse=True)
            if not missing:
                break
            lv = self._load(complete[missing[0]], wanted)
            if lv is not None:
                self._loaded[lv.version] = lv
                self._auto_canary(desired)
                self._swap(desired)
            elif self._pending is not None or self._stopping:
                return  # a newer scan supersedes this one (e.g. while waiting for memory)
        self._auto_canary(desired)
        self._swap(desired)
        keep = wanted | {lv.version for lv in self.route.table.labels.values()}
        for v in sorted(self._loaded.keys() - keep):
            self._retire(self._loaded.pop(v))
        self._trim_statuses(complete)

    def _wanted(self, complete: dict[int, VersionInfo]) -> tuple[set[int], set[int]]:
        """(versions the policy or pin serves by default, those plus every labelled version)."""
        with self._cv:
            candidates = [v for v in complete if v not in self._failed and v not in self._rolled_back]
            desired = self.policy.select(candidates)
            if self.pinned is not None:
                if self.pinned in complete and self.pinned not in self._failed:
                    desired = {self.pinned}
                else:
                    log.warning("model %s: pinned version %d is not a complete, loadable version; following the policy",
                                self.name, self.pinned)
            labelled = {v for v in self.labels.values() if v in complete and v not in self._failed}
        return desired, desired | labelled

    def _auto_canary(self, desired: set[int]) -> None:
        """With `canary: {auto: true}`, a new version enters as the canary instead of the default."""
        cfg = self.canary_cfg
        if cfg is None or not cfg.auto or self.pinned is not None:
            return
        live = sorted(v for v in desired if v in self._loaded)
        if not live:
            return
        newest = live[-1]
        with self._cv:
            stable = self.labels.get("stable")
            if stable is None or stable not in self._loaded:
                old = self.route.table.default
                self.labels["stable"] = old.version if old is not None and old.version != newest else newest
                stable = self.labels["stable"]
                self._persist()
            if newest > stable and self.labels.get("canary") != newest:
                self.labels["canary"] = newest
                self._persist()
                log.info("model %s: version %d enters as canary at %g%% beside stable version %d", self.name,
                         newest, self.canary_weight, stable, extra=_ev("canary_start", self.name, newest))

    def _build_table(self, desired: set[int]) -> RouteTable:
        old = self.route.table
        loaded = self._loaded
        with self._cv:
            labels, pinned, weight = dict(self.labels), self.pinned, self.canary_weight
        eff: dict[str, LoadedVersion] = {}
        for label, target in labels.items():
            if target in loaded:
                eff[label] = loaded[target]
            elif label in old.labels and old.labels[label].version in loaded:
                eff[label] = old.labels[label]  # moves only once the target is AVAILABLE
        versions = {v: lv for v, lv in loaded.items() if v in desired}
        versions.update({lv.version: lv for lv in eff.values()})
        canary_lv = eff.get("canary")
        if pinned is not None and pinned in loaded:
            default = loaded[pinned]
        elif "stable" in eff:
            default = eff["stable"]
        else:
            pool = [v for v in versions if v in desired and (canary_lv is None or v != canary_lv.version)]
            pool = pool or [v for v in versions if v in desired] or list(versions)
            default = versions[max(pool)] if pool else None
        split = canary_lv if (canary_lv is not None and default is not None and canary_lv is not default
                              and weight > 0 and pinned is None) else None
        return RouteTable(versions, default, eff, split, weight if split else 0.0)

    def _swap(self, desired: set[int]) -> None:
        new = self._build_table(desired)
        old = self.route.table
        if not new.versions:
            return
        if (new.versions == old.versions and new.default is old.default and new.labels == old.labels
                and new.canary is old.canary and new.canary_weight == old.canary_weight):
            return
        self.route.table = new  # the one atomic switch
        metrics.SWAPS.inc((self.name,))
        if new.default is not None and (not self._default_history or self._default_history[-1] != new.default.version):
            self._default_history = (self._default_history + [new.default.version])[-20:]
        if new.canary is not old.canary:
            self._canary_since = time.monotonic() if new.canary is not None else None
            self._canary_held = False
        metrics.CANARY_WEIGHT.remove_where(self.name)
        if new.canary is not None:
            metrics.CANARY_WEIGHT.set((self.name, str(new.default.version), str(new.canary.version)), new.canary_weight)
        canary_note = f", canary {new.canary.version} at {new.canary_weight:g}%" if new.canary else ""
        log.info("model %s: now serving versions %s (default %d%s; labels %s)", self.name, sorted(new.versions),
                 new.default.version if new.default else -1, canary_note,
                 {k: v.version for k, v in new.labels.items()},
                 extra=_ev("swap", self.name, new.default.version if new.default else None))

    # -- periodic analysis (called by the Manager's analysis thread) ------------------------
    _INLINE_SAMPLES = 50

    def update_inline_ok(self) -> None:
        """A version runs requests on the event loop only once 50 of its recent inferences show a
        median under the threshold; anything slower, or a version without enough samples, hops."""
        limit = self.options.inline_max_us
        lv = self.route.table.default
        if limit <= 0 or lv is None or self.route.table.canary is not None:
            self.inline_ok = False
            return
        recent = list(lv.stats.events)[-200:]
        if len(recent) < self._INLINE_SAMPLES:
            self.inline_ok = False
            return
        times = sorted(e[2] for e in recent)
        self.inline_ok = times[len(times) // 2] * 1e6 < limit


    def canary_tick(self, now: float) -> None:
        if not self.options.canary_analysis:
            return
        t = self.route.table
        cfg = self.canary_cfg
        if t.canary is None or t.default is None or cfg is None or self._canary_since is None or self._canary_held:
            return
        since = self._canary_since
        verdict = canary.analyze(cfg, since, now, t.default.stats.since(since), t.canary.stats.since(since))
        if verdict.decision == "wait":
            return
        v, stable = t.canary.version, t.default.version
        act = (verdict.decision == "rollback" and cfg.on_failure == "rollback") or (
            verdict.decision == "promote" and cfg.on_success == "promote")
        if not act:
            self._canary_held = True
            metrics.CANARY_DECISIONS.inc((self.name, f"{verdict.decision}_held"))
            log.warning("model %s: canary version %d would be %s (%s); holding as configured", self.name, v,
                        _DONE[verdict.decision], verdict.reason, extra=_ev("canary_hold", self.name, v))
            return
        with self._cv:
            if self.labels.get("canary") != v:
                return  # moved meanwhile
            del self.labels["canary"]
            if verdict.decision == "rollback":
                info = self._last_scan.complete.get(v)
                if info is not None:
                    self._rolled_back[v] = info.fingerprint
            else:
                self.labels["stable"] = v
            self._persist()
        # Report the decision once it has taken effect: the route no longer splits when the
        # event is logged and counted (both versions are loaded, so this is a swap, not a load).
        if not self._wait_reconciled(self._trigger(), 30.0):
            log.warning("model %s: canary decision for version %d is still being applied", self.name, v)
        metrics.CANARY_DECISIONS.inc((self.name, verdict.decision))
        if verdict.decision == "rollback":
            metrics.ROLLBACKS.inc((self.name, "canary"))
            log.warning("model %s: canary version %d rolled back, stable version %d keeps serving: %s",
                        self.name, v, stable, verdict.reason, extra=_ev("canary_rollback", self.name, v))
        else:
            log.info("model %s: canary version %d promoted to stable (was %d): %s", self.name, v, stable,
                     verdict.reason, extra=_ev("canary_promote", self.name, v))

    # -- loading ----------------------------------------------------------------------------
    def _set(self, st: VersionStatus, state: VersionState, code: Code = Code.OK, message: str = "") -> None:
        st.set(state, code, message)
        metrics.set_version_state(self.name, st.version, state.value)

    def _status(self, info: VersionInfo) -> VersionStatus:
        with self._status_lock:
            st = VersionStatus(info.version, fingerprint=info.fingerprint, size_bytes=info.size_bytes)
            self._statuses[info.version] = st
        self._set(st, VersionState.START)
        return st

    def _fail(self, st: VersionStatus, info: VersionInfo, code: Code, message: str, outcome: str) -> None:
        self._set(st, VersionState.END, code, message)
        self._failed[info.version] = info.fingerprint
        metrics.LOADS.inc((self.name, outcome))
        log.error("model %s version %d: failed to load, not serving it (%s); it is retried only if its directory changes",
                  self.name, info.version, message, extra=_ev("load_failed", self.name, info.version))

    def _reserve_memory(self, st: VersionStatus, info: VersionInfo, wanted: set[int]) -> bool:
        key, estimate = (self.name, info.version), info.size_bytes
        if self._budget.try_reserve(key, estimate):
            return True
        budget, used = self._budget.budget, self._budget.used()
        policy = self.options.memory_policy
        need = f"needs ~{estimate / 2**20:.1f} MiB, {max(0, budget - used) / 2**20:.1f} MiB of {budget / 2**20:.1f} MiB free"
        if policy == "refuse":
            self._fail(st, info, Code.RESOURCE_EXHAUSTED, f"memory budget exceeded: {need} (--memory_budget_policy=refuse)", "refused")
            return False
        if policy == "unload_first":
            victims = [lv for v, lv in self._loaded.items() if v not in wanted]
            if victims:
                log.warning("model %s version %d: %s; unloading versions %s first (resource-preserving: the model "
                            "may answer 503 until the new version is loaded)", self.name, info.version, need,
                            [lv.version for lv in victims], extra=_ev("unload_first", self.name, info.version))
                for lv in victims:
                    del self._loaded[lv.version]
                self.route.table = self._build_table(wanted) if self._loaded else RouteTable()
                for lv in victims:
                    self._retire(lv, wait=True)
                if self._budget.try_reserve(key, estimate):
                    return True
        st.error_message = f"waiting for memory: {need}"
        log.warning("model %s version %d: waiting for memory budget (%s)", self.name, info.version, need,
                    extra=_ev("memory_wait", self.name, info.version))
        while not self._stopping and self._pending is None:
            if self._budget.wait_reserve(key, estimate, 0.5):
                st.error_message = ""
                return True
        return False

    def _load(self, info: VersionInfo, wanted: set[int]) -> LoadedVersion | None:
        st = self._status(info)
        if not self._reserve_memory(st, info, wanted):
            if st.state is VersionState.START:
                with self._status_lock:
                    self._statuses.pop(info.version, None)  # superseded, not failed: it may be tried again
                metrics.forget_version(self.name, info.version)
            return None
        self._set(st, VersionState.LOADING)
        log.info("model %s version %d: loading from %s", self.name, info.version, info.path,
                 extra=_ev("load_start", self.name, info.version))
        t0 = time.perf_counter()
        try:
            servable, measured = self._load_pool.submit(self._load_blocking, info).result()
        except Exception as exc:
            self._budget.release((self.name, info.version))
            code = exc.code if isinstance(exc, HotserveError) else Code.UNKNOWN
            message = str(exc) if isinstance(exc, HotserveError) else f"{type(exc).__name__}: {exc}"
            metrics.LOAD_SECONDS.observe((self.name, "failed"), time.perf_counter() - t0)
            self._fail(st, info, code, message, "failed")
            return None
        st.load_seconds = time.perf_counter() - t0
        # RSS growth can undercount (pages shared or not yet touched): count at least the files.
        self._budget.commit((self.name, info.version), max(measured, info.size_bytes))
        metrics.LOADS.inc((self.name, "ok"))
        metrics.LOAD_SECONDS.observe((self.name, "ok"), st.load_seconds)
        metrics.VERSION_MEMORY.set((self.name, str(info.version), "measured"), measured)
        metrics.VERSION_MEMORY.set((self.name, str(info.version), "estimate"), info.size_bytes)
        self._set(st, VersionState.AVAILABLE)
        log.info("model %s version %d: available after %.3fs (memory +%.1f MiB, files %.1f MiB)", self.name,
                 info.version, st.load_seconds, measured / 2**20, info.size_bytes / 2**20,
                 extra=_ev("load_done", self.name, info.version))
        lv = LoadedVersion(self.name, info.version, servable)
        lv.batcher = self.batcher
        return lv

    def _load_blocking(self, info: VersionInfo) -> tuple[Servable, int]:
        rss0 = rss_of()
        if info.published:
            manifest.verify(info.path)
        servable = load_servable(self._storage.local_dir(info.path), self.options.runtime)
        try:
            validate(servable)
            t_warm = time.perf_counter()
            try:
                replayed = warm_up(servable)
            except LoadError:
                metrics.WARMUP_LATENCY.observe((self.name, "failed"), (time.perf_counter() - t_warm) * 1e6)
                raise
            if replayed:
                metrics.WARMUP_LATENCY.observe((self.name, "ok"), (time.perf_counter() - t_warm) * 1e6)
                log.info("model %s version %d: replayed %d warm-up request(s) in %.3fs", self.name, info.version,
                         replayed, time.perf_counter() - t_warm, extra=_ev("warmup_done", self.name, info.version))
            run_file_gates(servable, self._storage.local_dir(info.path))
        except BaseException:
            servable.unload()
            raise
        return servable, max(0, rss_of() - rss0)

    # -- retiring ---------------------------------------------------------------------------
    def _retire(self, lv: LoadedVersion, wait: bool = False) -> None:
        st = self._statuses.get(lv.version)
        if st is not None:
            self._set(st, VersionState.UNLOADING)
        lv.retire()
        log.info("model %s version %d: retired, draining %d in-flight request(s)", self.name, lv.version, lv.in_flight,
                 extra=_ev("retire", self.name, lv.version))
        if wait:
            self._drain_and_unload(lv)
        else:
            self._unload_pool.submit(self._drain_and_unload, lv)

    def _drain_and_unload(self, lv: LoadedVersion) -> None:
        lv.wait_drained()
        self._unload(lv)

    def _unload(self, lv: LoadedVersion) -> None:
        try:
            lv.servable.unload()
        except Exception:
            log.exception("model %s version %d: unload raised", self.name, lv.version)
        self._budget.release((self.name, lv.version))
        metrics.VERSION_MEMORY.remove((self.name, str(lv.version), "measured"))
        st = self._statuses.get(lv.version)
        if st is not None:
            self._set(st, VersionState.END)
        log.info("model %s version %d: unloaded", self.name, lv.version, extra=_ev("unloaded", self.name, lv.version))

    def _trim_statuses(self, complete: dict[int, VersionInfo]) -> None:
        with self._status_lock:
            gone = [v for v, st in self._statuses.items() if v not in complete and st.state is VersionState.END]
            for v in sorted(gone, reverse=True)[_ENDED_HISTORY:]:
                del self._statuses[v]
                metrics.forget_version(self.name, v)


class Manager:
    """All models of one server, the shared load/unload pools, memory budget and canary analysis."""

    def __init__(self, configs: list[ModelConfig], options: ManagerOptions | None = None) -> None:
        self.options = options or ManagerOptions()
        names = [c.name for c in configs]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {sorted(dupes)}")
        self._load_pool = ThreadPoolExecutor(max(1, self.options.num_load_threads), thread_name_prefix="load")
        self._unload_pool = ThreadPoolExecutor(max(1, self.options.num_unload_threads), thread_name_prefix="unload")
        self.budget = MemoryBudget(self.options.memory_budget_bytes)
        # Replaced as a whole (copy on write) so readers can iterate without a lock.
        self.models: dict[str, ModelManager] = {c.name: self._new(c) for c in configs}
        self._config_lock = threading.Lock()
        self._stop = threading.Event()
        self._analysis = threading.Thread(target=self._analyze_loop, name="canary-analysis", daemon=True)

    def _new(self, config: ModelConfig) -> ModelManager:
        return ModelManager(config, self.options, self._load_pool, self._unload_pool, self.budget)

    def acquire(self, name: str, version: int | None = None, label: str | None = None,
                key: str | None = None) -> LoadedVersion:
        """Bind a request to one live version; the caller must release() it."""
        return self.get(name).route.acquire(version, label, key)

    def get(self, name: str) -> ModelManager:
        mm = self.models.get(name)
        if mm is None:
            raise NotFound(f"Servable not found for request: model {name!r} is not configured on this server")
        return mm

    def start(self) -> None:
        for mm in self.models.values():
            mm.start()
        self._analysis.start()

    def stop(self) -> None:
        self._stop.set()
        for mm in self.models.values():
            mm.stop()
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._unload_pool.shutdown(wait=True)

    def ready(self) -> bool:
        # A model an operator unloaded on purpose does not make the whole server unready.
        return all(mm.is_ready() or mm.explicitly_unloaded for mm in self.models.values())

    def _analyze_loop(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            for mm in list(self.models.values()):
                try:
                    mm.canary_tick(now)
                    mm.update_inline_ok()
                except Exception:
                    log.exception("model %s: periodic analysis failed", mm.name)

    def apply_config(self, configs: list[ModelConfig], timeout: float | None = None) -> dict[str, str]:
        """Make the served models match `configs`: add, update, and remove (after draining).
        With a timeout, wait until every configured model is ready or failed; returns
        {model: "AVAILABLE" | reason} and raises Unavailable naming the models still loading."""
        with self._config_lock:
            current = self.models
            new: dict[str, ModelManager] = {}
            started, removed = [], []
            for c in configs:
                mm = current.get(c.name)
                if mm is not None and normalize_base_path(c.base_path) == mm.base_path:
                    mm.update_config(c)
                    new[c.name] = mm
                else:
                    fresh = self._new(c)
                    fresh.start()
                    started.append((fresh, mm))
                    new[c.name] = fresh if mm is None else mm
            removed = [mm for name, mm in current.items() if name not in new]
            self.models = new
            # A model whose base path changed keeps serving from the old path until the new one is ready.
            for fresh, old in started:
                if old is not None:
                    deadline = time.monotonic() + (timeout or 60.0)
                    while not fresh.is_ready() and time.monotonic() < deadline:
                        time.sleep(0.05)
                    self.models = {**self.models, fresh.name: fresh}
                    removed.append(old)
            for mm in removed:
                log.info("model %s: removed from the config; draining and unloading", mm.name,
                         extra=_ev("model_removed", mm.name))
                threading.Thread(target=mm.stop, name=f"remove-{mm.name}", daemon=True).start()
        if timeout is None:
            return {}
        deadline = time.monotonic() + timeout
        result: dict[str, str] = {}
        for c in configs:
            mm = self.models[c.name]
            while time.monotonic() < deadline:
                if mm.wait_idle(0.05) and (mm.is_ready() or mm._failed or mm.outage):
                    break
            if mm.is_ready():
                result[c.name] = "AVAILABLE"
            else:
                errors = [f"version {st.version}: {st.error_message}" for st in mm.statuses() if st.error_message]
                result[c.name] = mm.outage or "; ".join(errors) or "still loading"
        missing = {n: r for n, r in result.items() if r != "AVAILABLE"}
        if missing:
            detail = "; ".join(f"{n!r}: {r}" for n, r in missing.items())
            raise Unavailable(f"config applied, but after {timeout:g}s these models have no available version "
                              f"({detail}); they keep loading in the background")
        return result
