"""The manager: per model, decide which versions should be live and make it so.

Each model has one reconcile thread fed by its repository watcher. A reconcile computes the
desired set from the policy, loads what is missing in the shared bounded load pool (never on
the event loop), swaps the route table in one assignment once a version has passed its
gate, and only then retires versions that are no longer desired; a retired version drains
in the unload pool and is unloaded after its last in-flight request.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hotserve.core.loaded import LoadedVersion
from hotserve.core.policy import Latest, VersionPolicy
from hotserve.core.router import Route, RouteTable
from hotserve.core.states import VersionState, VersionStatus
from hotserve.core.validation import validate, warm_up
from hotserve.errors import Code, HotserveError, NotFound, Unavailable
from hotserve.repository import manifest
from hotserve.repository.scanner import Fingerprint, ScanResult, VersionInfo, VersionScanner
from hotserve.repository.storage import StorageUnavailable, normalize_base_path, storage_for
from hotserve.repository.watcher import RepositoryWatcher
from hotserve.runtimes.base import Servable
from hotserve.runtimes.registry import RuntimeOptions, load_servable

log = logging.getLogger("hotserve.manager")

# Ended versions that left the repository are kept in status this many at most, newest first,
# so operators can still read why a version failed.
_ENDED_HISTORY = 10


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: VersionPolicy = field(default_factory=Latest)


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


class ModelManager:
    def __init__(
        self,
        config: ModelConfig,
        options: ManagerOptions,
        load_pool: ThreadPoolExecutor,
        unload_pool: ThreadPoolExecutor,
    ) -> None:
        self.name = config.name
        self.base_path = normalize_base_path(config.base_path)
        self.policy = config.policy
        self.options = options
        self.route = Route(self.name)
        self.outage: str | None = None
        self._load_pool = load_pool
        self._unload_pool = unload_pool
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
        storage = storage_for(config.base_path)
        self._storage = storage
        self.scanner = VersionScanner(storage, self.base_path, options.settle_seconds, self.name)
        self.watcher = RepositoryWatcher(
            self.scanner, self._on_scan, self._on_outage, options.poll_wait_seconds, options.use_inotify
        )

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
                log.warning("model %s version %d: unloading with %d request(s) still in flight at shutdown", self.name, lv.version, lv.in_flight)
            self._unload(lv)
        self._loaded.clear()

    # -- status (read by front ends) --------------------------------------------------------
    def statuses(self, version: int | None = None) -> list[VersionStatus]:
        with self._status_lock:
            if version is not None:
                if version not in self._statuses:
                    raise NotFound(f"Could not find version {version} of model {self.name}")
                return [self._statuses[version]]
            return [self._statuses[v] for v in sorted(self._statuses, reverse=True)]

    def is_ready(self, version: int | None = None) -> bool:
        table = self.route.table
        return table.default is not None if version is None else version in table.versions

    # -- repository events ------------------------------------------------------------------
    def _on_scan(self, result: ScanResult) -> None:
        with self._cv:
            self._pending = result
            self._idle.clear()
            self._cv.notify()

    def _on_outage(self, message: str) -> None:
        self.outage = message
        served = sorted(self._loaded)
        log.warning(
            "model %s: storage unavailable (%s); keeping served versions %s until it is back",
            self.name, message, served or "none",
            extra={"event": "storage_outage", "model": self.name},
        )

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

    # -- explicit load / unload (Triton's repository extension) -----------------------------
    def _wait_reconciled(self, after: int, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._reconciles > after and self._pending is None, timeout)

    def request_load(self, timeout: float = 60.0) -> int:
        """Serve again after an unload and pick up the newest complete version now; blocks
        until it is AVAILABLE and returns it. Raises if nothing could be made available."""
        try:
            scan = self.watcher.scan_now()
        except StorageUnavailable as exc:
            raise Unavailable(f"model {self.name!r} could not be loaded: {exc}") from None
        with self._cv:
            self._unloaded = False
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
            seen = self._reconciles
            if self._pending is None:
                self._pending = self._last_scan
            self._cv.notify()
        self._wait_reconciled(seen, timeout)
        for lv in draining:
            lv.wait_drained(timeout)

    @property
    def explicitly_unloaded(self) -> bool:
        return self._unloaded

    # -- reconcile --------------------------------------------------------------------------
    def _reconcile(self, scan: ScanResult) -> None:
        self.outage = None
        self._last_scan = scan
        if self._unloaded:
            if self.route.table.versions:
                self.route.table = RouteTable()
                log.info("model %s: unloaded on request; serving nothing until loaded again", self.name,
                         extra={"event": "model_unloaded", "model": self.name})
            for v in sorted(self._loaded):
                self._retire(self._loaded.pop(v))
            return
        complete = scan.complete
        for v, fp in list(self._failed.items()):
            info = complete.get(v)
            if info is None or info.fingerprint != fp:
                del self._failed[v]  # the directory changed: the version may be retried
        while True:
            candidates = [v for v in complete if v not in self._failed]
            desired = self.policy.select(candidates)
            if not desired:
                if self._loaded:
                    log.warning(
                        "model %s: no loadable version in %s; keeping served versions %s",
                        self.name, self.base_path, sorted(self._loaded),
                    )
                return
            missing = sorted(desired - self._loaded.keys(), reverse=True)
            if not missing:
                break
            lv = self._load(complete[missing[0]])
            if lv is not None:
                self._loaded[lv.version] = lv
                self._swap(desired)
        self._swap(desired)
        for v in sorted(self._loaded.keys() - desired):
            self._retire(self._loaded.pop(v))
        self._trim_statuses(complete)

    def _swap(self, desired: set[int]) -> None:
        live = {v: lv for v, lv in self._loaded.items() if v in desired}
        if not live:
            return
        old = self.route.table
        new = RouteTable.build(live)
        if len(live) == len(old.versions) and all(old.versions.get(v) is lv for v, lv in live.items()):
            return
        self.route.table = new  # the one atomic switch
        log.info(
            "model %s: now serving versions %s (default %d)", self.name, sorted(live), new.default.version,
            extra={"event": "swap", "model": self.name, "version": new.default.version},
        )

    def _status(self, info: VersionInfo) -> VersionStatus:
        with self._status_lock:
            st = VersionStatus(info.version, fingerprint=info.fingerprint, size_bytes=info.size_bytes)
            self._statuses[info.version] = st
            return st

    def _load(self, info: VersionInfo) -> LoadedVersion | None:
        st = self._status(info)
        st.set(VersionState.LOADING)
        log.info("model %s version %d: loading from %s", self.name, info.version, info.path,
                 extra={"event": "load_start", "model": self.name, "version": info.version})
        t0 = time.perf_counter()
        try:
            servable = self._load_pool.submit(self._load_blocking, info).result()
        except Exception as exc:
            code = exc.code if isinstance(exc, HotserveError) else Code.UNKNOWN
            message = str(exc) if isinstance(exc, HotserveError) else f"{type(exc).__name__}: {exc}"
            st.set(VersionState.END, code, message)
            self._failed[info.version] = info.fingerprint
            log.error(
                "model %s version %d: failed to load, not serving it (%s); it is retried only if its directory changes",
                self.name, info.version, message,
                extra={"event": "load_failed", "model": self.name, "version": info.version},
            )
            return None
        st.load_seconds = time.perf_counter() - t0
        st.set(VersionState.AVAILABLE)
        log.info("model %s version %d: available after %.3fs", self.name, info.version, st.load_seconds,
                 extra={"event": "load_done", "model": self.name, "version": info.version})
        return LoadedVersion(self.name, info.version, servable)

    def _load_blocking(self, info: VersionInfo) -> Servable:
        if info.published:
            manifest.verify(info.path)
        servable = load_servable(self._storage.local_dir(info.path), self.options.runtime)
        try:
            validate(servable)
            t_warm = time.perf_counter()
            replayed = warm_up(servable)
            if replayed:
                log.info("model %s version %d: replayed %d warm-up request(s) in %.3fs", self.name, info.version,
                         replayed, time.perf_counter() - t_warm,
                         extra={"event": "warmup_done", "model": self.name, "version": info.version})
        except BaseException:
            servable.unload()
            raise
        return servable

    def _retire(self, lv: LoadedVersion) -> None:
        st = self._statuses.get(lv.version)
        if st is not None:
            st.set(VersionState.UNLOADING)
        lv.retire()
        log.info("model %s version %d: retired, draining %d in-flight request(s)", self.name, lv.version, lv.in_flight,
                 extra={"event": "retire", "model": self.name, "version": lv.version})
        self._unload_pool.submit(self._drain_and_unload, lv)

    def _drain_and_unload(self, lv: LoadedVersion) -> None:
        lv.wait_drained()
        self._unload(lv)

    def _unload(self, lv: LoadedVersion) -> None:
        try:
            lv.servable.unload()
        except Exception:
            log.exception("model %s version %d: unload raised", self.name, lv.version)
        st = self._statuses.get(lv.version)
        if st is not None:
            st.set(VersionState.END)
        log.info("model %s version %d: unloaded", self.name, lv.version,
                 extra={"event": "unloaded", "model": self.name, "version": lv.version})

    def _trim_statuses(self, complete: dict[int, VersionInfo]) -> None:
        with self._status_lock:
            gone = [
                v for v, st in self._statuses.items()
                if v not in complete and st.state is VersionState.END
            ]
            for v in sorted(gone, reverse=True)[_ENDED_HISTORY:]:
                del self._statuses[v]

    def wait_idle(self, timeout: float) -> bool:
        """True once the reconcile thread has nothing pending (for tools and tests)."""
        return self._idle.wait(timeout)


class Manager:
    """All models of one server."""

    def __init__(self, configs: list[ModelConfig], options: ManagerOptions | None = None) -> None:
        self.options = options or ManagerOptions()
        names = [c.name for c in configs]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {sorted(dupes)}")
        self._load_pool = ThreadPoolExecutor(max(1, self.options.num_load_threads), thread_name_prefix="load")
        self._unload_pool = ThreadPoolExecutor(max(1, self.options.num_unload_threads), thread_name_prefix="unload")
        self.models: dict[str, ModelManager] = {
            c.name: ModelManager(c, self.options, self._load_pool, self._unload_pool) for c in configs
        }

    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """Bind a request to one live version; the caller must release() it."""
        mm = self.get(name)
        if label is not None:
            raise NotFound(f"label {label!r} is not assigned for model {name!r}; no version labels are configured")
        return mm.route.acquire(version)

    def get(self, name: str) -> ModelManager:
        mm = self.models.get(name)
        if mm is None:
            raise NotFound(f"Servable not found for request: model {name!r} is not configured on this server")
        return mm

    def start(self) -> None:
        for mm in self.models.values():
            mm.start()

    def stop(self) -> None:
        for mm in self.models.values():
            mm.stop()
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._unload_pool.shutdown(wait=True)

    def ready(self) -> bool:
        # A model an operator unloaded on purpose does not make the whole server unready.
        return all(mm.is_ready() or mm.explicitly_unloaded for mm in self.models.values())
