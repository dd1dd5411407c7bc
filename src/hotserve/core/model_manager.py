"""One model: watch its repository, ask the planner what to do, do it.

Each model has one reconcile thread, fed by its repository watcher (new scans), by routing
intent changes (operators, config reloads, canary analysis, sibling workers) and by explicit
load/unload requests. A reconcile asks the planner for the next step, persists the label
changes the plan carries, publishes the plan's route table (`_publish`, the only place the
route table is assigned: one atomic reference swap), loads the next version through the
loader (in the background pool) and, once nothing is left to load, retires the versions
nobody wants; a retired version drains in the unload pool and is unloaded after its last
in-flight request (invariant 1).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hotserve.batching.batcher import Batcher
from hotserve.batching.parameters import BatchingParameters
from hotserve.core import inline, planner
from hotserve.core.config import ModelConfig
from hotserve.core.gates.pipeline import GatePipeline
from hotserve.core.intent import IntentKeeper
from hotserve.core.loaded import LoadedVersion
from hotserve.core.loader import VersionLoader
from hotserve.core.memory import MemoryBudget
from hotserve.core.router import Route, RouteTable
from hotserve.core.states import VersionBook, VersionState, VersionStatus
from hotserve.errors import Code, NotFound
from hotserve.observability import metrics
from hotserve.observability.events import BUS, EventBus, Notice, Retired, StorageOutage, Swapped
from hotserve.repository.metered import metered
from hotserve.repository.routing_store import FileRoutingStore, RoutingStore
from hotserve.repository.scanner import Fingerprint, ScanResult, VersionInfo, VersionScanner
from hotserve.repository.storage import normalize_base_path, storage_for
from hotserve.repository.watcher import RepositoryWatcher
from hotserve.runtimes.registry import RuntimeOptions

log = logging.getLogger("hotserve.manager")


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
    # through the routing store.
    canary_analysis: bool = True
    # --inference_threading=auto: a model whose recent median inference is under this many
    # microseconds may run small requests on the event loop (0: never).
    inline_max_us: float = 0.0
    # Remote stores (s3://, gs://, hdfs://): where versions are downloaded to before loading
    # (None: under the system temp dir), how many unused versions per model the cache keeps,
    # how many downloads run at once, and a random delay of up to this many seconds before each
    # download (spreads a fleet's downloads of a new version).
    model_cache_dir: str | None = None
    model_cache_keep_unused: int = 2
    max_concurrent_downloads: int = 2
    load_jitter_seconds: float = 0.0
    # A fleet's replica (--fleet): what serves is the fleet's version (cluster/), not the policy's.
    fleet: bool = False


def make_batcher(name: str, config: ModelConfig, default: BatchingParameters | None) -> Batcher | None:
    params = default if config.batching is None else config.batching
    if not isinstance(params, BatchingParameters):
        return None
    log.info(
        "model %s: dynamic batching on (max_batch_size %d, batch_timeout_micros %d, %d batch thread(s))",
        name, params.max_batch_size, params.batch_timeout_micros, params.num_batch_threads)
    return Batcher(name, params)


class ModelManager:
    def __init__(self, config: ModelConfig, options: ManagerOptions, load_pool: ThreadPoolExecutor,
                 unload_pool: ThreadPoolExecutor, budget: MemoryBudget, gates: GatePipeline,
                 store: RoutingStore | None = None, bus: EventBus = BUS) -> None:
        self.name = config.name
        self.base_path = normalize_base_path(config.base_path)
        self.options = options
        self.bus = bus
        storage = storage_for(self.base_path)
        if not storage.local:
            # Every request to a remote store is counted per model: the bill, visible.
            storage.on_request = lambda kind, model=self.name: metrics.count_storage_request(model, kind)
        self.storage = metered(storage)  # every operation counted and timed, any store
        self.scanner = VersionScanner(self.storage, self.base_path, options.settle_seconds, self.name)
        self.route = Route(self.name)
        self.book = VersionBook(self.name, bus)
        # The routing state file is re-read only when the scanner's listing shows it changed.
        store = store or FileRoutingStore(self.storage, self.base_path, listed=lambda: self.scanner.top_level)
        self.intent = IntentKeeper(self.name, config, store, bus, fleet=options.fleet)
        self.loader = VersionLoader(self.name, self.storage, self.book, load_pool, budget, gates, options.runtime,
                                    options.memory_policy, bus)
        self.batcher = make_batcher(self.name, config, options.batching)
        self.outage: str | None = None
        self.outage_since: float | None = None  # unix time the store became unreachable
        self._retry_delay: dict[int, float] = {}  # version -> next backoff after a failed download
        self._retry_timer: threading.Timer | None = None
        # True while the default version's recent median inference is cheap enough to run on
        # the event loop (--inference_threading=auto); read by front ends without a lock.
        self.inline_ok = False
        self._unload_pool = unload_pool
        self._loaded: dict[int, LoadedVersion] = {}  # written by the reconcile thread only
        self._loaded_lock = threading.Lock()
        self._failed: dict[int, Fingerprint] = {}
        self._unreadable: dict[int, str] = {}
        self._pending: ScanResult | None = None
        self._last_scan = ScanResult(complete={})
        self._scanned = False  # no reconcile before the first scan: an empty scan is not the repository
        self._reconciles = 0
        self._cv = threading.Condition()
        self._stopping = False
        self._idle = threading.Event()
        self._last_note = ""
        self._default_history: list[int] = []
        self._thread = threading.Thread(target=self._run, name=f"manager-{self.name}", daemon=True)
        self.watcher = RepositoryWatcher(self.scanner, self._on_scan, self._on_outage, options.poll_wait_seconds,
                                         options.use_inotify, on_recovered=self._on_recovered,
                                         on_deltas=self._on_deltas)
        self.intent.store.watch(self._on_routing_change)
        self.watcher.add_probe(self.intent.store.poll)

    @property
    def config(self) -> ModelConfig:
        return self.intent.config

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self.intent.store.close()
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout=10)
        self._publish(planner.EMPTY)
        for lv in self.loaded():
            self._retire(lv, wait=True, timeout=self.options.drain_timeout_seconds)
        if self.batcher is not None:
            self.batcher.stop()
        for v in self.book.versions():
            self.book.forget(v)

    # -- reading (front ends, operator commands, the dashboard) -----------------------------
    def statuses(self, version: int | None = None) -> list[VersionStatus]:
        return self.book.statuses(version)

    def loaded(self) -> list[LoadedVersion]:
        with self._loaded_lock:
            return list(self._loaded.values())

    def loaded_versions(self) -> set[int]:
        with self._loaded_lock:
            return set(self._loaded)

    def complete_versions(self) -> dict[int, VersionInfo]:
        return self._last_scan.complete

    def failed_versions(self) -> set[int]:
        return set(self._failed)

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

    def runs_inline(self, weight: int) -> bool:
        """Whether a request of this weight (core/inline.py's request_weight) may run on the event
        loop (--inference_threading=auto)."""
        return self.inline_ok and weight <= inline.MAX_WEIGHT

    @property
    def explicitly_unloaded(self) -> bool:
        return self.intent.state.unloaded

    @property
    def default_history(self) -> list[int]:
        return list(self._default_history)

    # -- repository and store events ---------------------------------------------------------
    def _on_scan(self, result: ScanResult) -> None:
        with self._cv:
            self._scanned = True
            self._pending = result
            self._idle.clear()
            self._cv.notify()

    def _on_deltas(self, result: ScanResult) -> None:
        """New delta log commits under loaded versions (another worker, replica or the learner
        wrote them): apply them (in the watcher's thread; a delta is milliseconds of work)."""
        for lv in self.loaded():
            info = result.complete.get(lv.version)
            keeper = lv.params
            if info is not None and keeper is not None and info.deltas > keeper.applied_seq:
                keeper.catch_up("follow")

    def storage_status(self) -> dict | None:
        """None while the store answers; else since when (unix time) and why it does not."""
        if self.outage is None:
            return None
        return {"available": False, "since": self.outage_since, "error": self.outage,
                "serving": sorted(self.loaded_versions())}

    def _on_outage(self, message: str) -> None:
        self.outage_since = time.time()
        self.outage = message
        self.bus.publish(StorageOutage(self.name, message, tuple(sorted(self.loaded_versions()))))

    def _on_recovered(self) -> None:
        self.outage = None
        self.outage_since = None
        self.bus.publish(StorageOutage(self.name, "", tuple(sorted(self.loaded_versions())), ended=True))

    def _on_routing_change(self) -> None:
        """Another process (a sibling worker, a fleet peer, the CLI) changed the routing intent."""
        if self.intent.adopt_stored():
            self.trigger()

    # -- the reconcile thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stopping:
                    self._idle.set()
                    # A version kept loaded for a while (a fleet's previous version) is let go
                    # when its time is up: plan again then.
                    wake = self.intent.wake_in()
                    if not self._cv.wait(wake) and wake is not None and self._pending is None and self._scanned:
                        self._pending = self._last_scan
                if self._stopping:
                    return
                scan, self._pending = self._pending, None
            try:
                self._reconcile(scan)
            except Exception as exc:
                log.exception("model %s: reconcile failed; served versions unchanged", self.name)
                self.bus.publish(Notice(self.name, None, "reconcile_failed", f"reconcile failed: {exc!r}"))
            with self._cv:
                self._reconciles += 1
                self._cv.notify_all()

    def trigger(self) -> int:
        """Reconcile again with the last scan (intent changed); returns the count to wait past."""
        with self._cv:
            seen = self._reconciles
            if self._pending is None and self._scanned:
                self._pending = self._last_scan
            self._idle.clear()
            self._cv.notify_all()
            return seen

    def rescan(self) -> int:
        """Scan the repository now (in the caller's thread) and reconcile with it; raises
        StorageUnavailable. Returns the count to wait past."""
        scan = self.watcher.scan_now()
        with self._cv:
            seen = self._reconciles
            self._scanned = True
            self._pending = scan
            self._idle.clear()
            self._cv.notify_all()
            return seen

    def wait_reconciled(self, after: int, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._reconciles > after and self._pending is None, timeout)

    def wait_idle(self, timeout: float) -> bool:
        """True once the reconcile thread has nothing pending (for tools and tests)."""
        return self._idle.wait(timeout)

    def _superseded(self) -> bool:
        return self._pending is not None or self._stopping

    def _reconcile(self, scan: ScanResult) -> None:
        scan = self._keep_unreadable_loaded(scan)
        self._last_scan = scan
        complete = scan.complete
        for v, fp in list(self._failed.items()):
            info = complete.get(v)
            if info is None or info.fingerprint != fp:
                del self._failed[v]  # the directory changed: the version may load again
        changed = [v for v, fp in self.intent.state.rolled_back.items()
                   if v not in complete or complete[v].fingerprint != fp]
        if changed:
            self.intent.change(lambda st: st.with_changes(rolled_back={v: fp for v, fp in st.rolled_back.items()
                                                                       if v not in changed}),
                               "repository", "rolled-back version changed")
        while True:
            snap = planner.Snapshot(frozenset(complete), frozenset(self._failed), frozenset(self.loaded_versions()),
                                    self.route.table.spec())
            step = planner.plan(snap, self.intent.intent())
            if step.note and step.note != self._last_note:
                self.bus.publish(Notice(self.name, None, "plan", step.note))
            self._last_note = step.note
            if step.label_changes:
                self._apply_label_changes(step.label_changes)
            self._publish(step.table)
            if step.load is None:
                for v in sorted(step.unload):
                    lv = self._take(v)
                    if lv is not None:
                        self._retire(lv)
                break
            info = complete[step.load]
            outcome = self.loader.load(info, lambda: self._make_room(snap), self._superseded)
            if outcome.loaded is not None:
                self._retry_delay.pop(info.version, None)
                outcome.loaded.batcher = self.batcher
                with self._loaded_lock:
                    self._loaded[info.version] = outcome.loaded
                if outcome.loaded.params is not None:
                    outcome.loaded.params.catch_up("follow")  # deltas committed while it loaded
            elif outcome.failed:
                self._failed[info.version] = info.fingerprint
                if self._superseded():
                    return
            elif outcome.transient:
                self._retry_later(info.version, outcome.transient)
                return
            else:
                return  # superseded by a newer scan or a stop
        self.book.trim(set(complete))

    def _keep_unreadable_loaded(self, scan: ScanResult) -> ScanResult:
        """A loaded version whose directory became unreadable keeps serving its loaded copy (it
        stays 'complete' with what we knew of it); one never loaded ends in END with the reason.
        Either way its status says so, until the directory is readable again."""
        if not scan.unreadable and not self._unreadable:
            return scan
        complete = dict(scan.complete)
        loaded = self.loaded_versions()
        for v, why in scan.unreadable.items():
            if self._unreadable.get(v) != why:
                self.bus.publish(Notice(self.name, v, "unreadable", f"version {v}: {why}" + (
                    "; the loaded copy keeps serving" if v in loaded else "; it will not load until it is readable")))
            if v in loaded and v in self._last_scan.complete:
                complete[v] = self._last_scan.complete[v]
                self.book.note(v, f"{why}; the loaded copy keeps serving")
            elif v not in loaded:
                st = self.book.get(v)
                if st is None or st.state is not VersionState.END or st.error_message != why:
                    if st is None:
                        self.book.start(v)
                    self.book.set(v, VersionState.END, Code.FAILED_PRECONDITION, why)
        for v in set(self._unreadable) - set(scan.unreadable):  # readable again
            st = self.book.get(v)
            if st is not None and st.state is VersionState.END and st.error_message == self._unreadable[v]:
                self.book.forget(v)
            elif st is not None and v in loaded:
                self.book.note(v, "")
        self._unreadable = dict(scan.unreadable)
        return ScanResult(complete, scan.pending, scan.next_check_in, scan.unreadable)

    def _retry_later(self, version: int, why: str) -> None:
        """The download of `version` failed for a reason outside it (the store): try again after
        a backoff that doubles per failure, up to a minute."""
        delay = self._retry_delay.get(version, 1.0)
        self._retry_delay[version] = min(60.0, delay * 2)
        self.bus.publish(Notice(self.name, version, "download_retry",
                                f"version {version}: could not be downloaded ({why}); retrying in {delay:g}s"))
        timer = threading.Timer(delay, self.trigger)
        timer.daemon = True
        self._retry_timer = timer
        timer.start()

    def _apply_label_changes(self, changes: dict[str, int]) -> None:
        from hotserve.observability.events import CanaryDecision

        self.intent.change(lambda st: st.with_changes(labels={**st.labels, **changes}), "auto_canary", "new version",
                           changes.get("canary"))
        if "canary" in changes:
            stable = self.intent.state.labels.get("stable", -1)
            self.bus.publish(CanaryDecision(self.name, changes["canary"], stable, "start",
                                            f"at {self.intent.canary_weight():g}%"))

    def _make_room(self, snap: planner.Snapshot) -> bool:
        """--memory_budget_policy=unload_first: stop routing to and unload every loaded version
        nobody wants, before the new one loads. True if any was unloaded."""
        intent = self.intent.intent()
        desired, wanted, _ = planner.wanted_versions(snap, intent)
        victims = [v for v in self.loaded_versions() if v not in wanted]
        if not victims:
            return False
        remaining = frozenset(self.loaded_versions() - set(victims))
        table = planner.build_table(remaining, desired, intent, self.route.table.spec()) if remaining else planner.EMPTY
        self._publish(table)
        for v in victims:
            lv = self._take(v)
            if lv is not None:
                self._retire(lv, wait=True)
        return True

    # -- the one switch ---------------------------------------------------------------------
    def _publish(self, spec: planner.TableSpec) -> None:
        """Make `spec` the route table: one reference assignment, the only one."""
        old = self.route.table
        if spec.same_routing(old.spec()):
            return
        with self._loaded_lock:
            new = RouteTable.from_spec(spec, self._loaded)
        split = new.canary is not None
        for bound in (new.default, new.canary):
            if bound is not None:
                bound.stats.widen(split)  # before the switch: the analysis reads from the split's start
        self.route.table = new  # the one atomic switch
        if new.default is not None and (not self._default_history or self._default_history[-1] != new.default.version):
            self._default_history = (self._default_history + [new.default.version])[-20:]
        self.bus.publish(Swapped(self.name, spec.default, tuple(sorted(spec.versions)), dict(spec.labels), spec.canary,
                                 spec.canary_weight, old.default.version if old.default is not None else None))

    # -- retiring ---------------------------------------------------------------------------
    def _take(self, version: int) -> LoadedVersion | None:
        with self._loaded_lock:
            return self._loaded.pop(version, None)

    def _retire(self, lv: LoadedVersion, wait: bool = False, timeout: float | None = None) -> None:
        if self.book.get(lv.version) is not None:
            self.book.set(lv.version, VersionState.UNLOADING)
        lv.retire()
        self.bus.publish(Retired(self.name, lv.version, lv.in_flight))
        if wait:
            self._drain_and_unload(lv, timeout)
        else:
            self._unload_pool.submit(self._drain_and_unload, lv)

    def _drain_and_unload(self, lv: LoadedVersion, timeout: float | None = None) -> None:
        if not lv.wait_drained(timeout):
            self.bus.publish(Notice(self.name, lv.version, "drain_timeout",
                                    f"version {lv.version}: unloading with {lv.in_flight} request(s) still in flight at shutdown"))
        self.loader.unload(lv)

    # -- config -----------------------------------------------------------------------------
    def update_config(self, config: ModelConfig) -> None:
        """A reloaded config for this model (same base path): new policy, labels, canary, batching."""
        old_batcher = None
        if config.batching != self.config.batching:
            # New requests bind to versions that use the new batcher; old batches finish.
            old_batcher, self.batcher = self.batcher, make_batcher(self.name, config, self.options.batching)
            for lv in self.loaded():
                lv.batcher = self.batcher
        self.intent.set_config(config)
        if old_batcher is not None:
            threading.Thread(target=old_batcher.stop, daemon=True).start()
        self.trigger()
