"""The version loader: memory budget, then load and gates in the background pool.

A load never runs on the event loop or the reconcile thread's caller: the runtime's load, the
gates and the warm-up all happen in the shared load pool, and the reconcile thread only waits
for the result. What it returns is a LoadedVersion that passed every gate, or None with the
failure in the version's status (END), on the bus, and never retried until its directory changes.

Versions on remote stores are loaded from a verified local copy (Storage.local_dir: the cache
downloads and checks it). A download that kept failing because the store was unreachable is
not a failure of the version: the outcome says `transient` and the manager tries again later.
The local copy is released when the version unloads or fails, so the cache may evict it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from hotserve.core.gates.pipeline import FILES, SERVABLE, GateContext, GatePipeline
from hotserve.core.loaded import LoadedVersion
from hotserve.core.parameters import ParameterKeeper
from hotserve.core.memory import MemoryBudget
from hotserve.core.states import VersionBook, VersionState
from hotserve.errors import Code, HotserveError
from hotserve.observability.events import BUS, EventBus, LoadFailed, LoadFinished, LoadStarted, Notice, Unloaded
from hotserve.observability.process import rss_of
from hotserve.repository.scanner import VersionInfo
from hotserve.repository.storage import Storage, StorageUnavailable
from hotserve.runtimes.base import Servable
from hotserve.runtimes.registry import RuntimeOptions, load_servable

MEMORY_POLICIES = ("wait", "unload_first", "refuse")


@dataclass(frozen=True)
class LoadOutcome:
    loaded: LoadedVersion | None
    failed: bool  # False with loaded None: superseded (e.g. stopped waiting for memory), may be tried again
    transient: str = ""  # why a load that may be retried soon did not happen (store unreachable)


class VersionLoader:
    def __init__(self, model: str, storage: Storage, book: VersionBook, pool: ThreadPoolExecutor,
                 budget: MemoryBudget, gates: GatePipeline, runtime: RuntimeOptions, memory_policy: str = "wait",
                 bus: EventBus = BUS) -> None:
        if memory_policy not in MEMORY_POLICIES:
            raise ValueError(f"memory policy must be one of {MEMORY_POLICIES}, got {memory_policy!r}")
        self.model = model
        self.storage = storage
        self.book = book
        self.pool = pool
        self.budget = budget
        self.gates = gates
        self.runtime = runtime
        self.memory_policy = memory_policy
        self.bus = bus
        self._paths: dict[int, str] = {}  # loaded version -> its path in the store (to release its local copy)

    # -- memory -----------------------------------------------------------------------------
    def _reserve(self, info: VersionInfo, make_room: Callable[[], bool], superseded: Callable[[], bool]) -> str | None:
        """Reserve memory for the version; returns None when reserved, else why not ("refused",
        "superseded")."""
        key, estimate = (self.model, info.version), info.size_bytes
        if self.budget.try_reserve(key, estimate):
            return None
        budget, used = self.budget.budget, self.budget.used()
        need = (f"needs ~{estimate / 2**20:.1f} MiB, {max(0, budget - used) / 2**20:.1f} MiB of "
                f"{budget / 2**20:.1f} MiB free")
        if self.memory_policy == "refuse":
            self._fail(info, Code.RESOURCE_EXHAUSTED, f"memory budget exceeded: {need} (--memory_budget_policy=refuse)",
                       "refused")
            return "refused"
        if self.memory_policy == "unload_first" and make_room():
            self.bus.publish(Notice(self.model, info.version, "unload_first",
                                    f"version {info.version} {need}; unloaded versions nobody wants first "
                                    "(resource-preserving: the model may answer 503 until it loads)"))
            if self.budget.try_reserve(key, estimate):
                return None
        self.book.note(info.version, f"waiting for memory: {need}")
        self.bus.publish(Notice(self.model, info.version, "memory_wait", f"version {info.version} waiting for memory budget ({need})"))
        while not superseded():
            if self.budget.wait_reserve(key, estimate, 0.5):
                self.book.note(info.version, "")
                return None
        return "superseded"

    # -- loading ----------------------------------------------------------------------------
    def load(self, info: VersionInfo, make_room: Callable[[], bool], superseded: Callable[[], bool]) -> LoadOutcome:
        """Load, gate and warm up one version; blocks the caller (the reconcile thread) only."""
        self.book.start(info.version, info.fingerprint, info.size_bytes)
        why = self._reserve(info, make_room, superseded)
        if why == "superseded":
            self.book.forget(info.version)  # not failed: it may be tried again
            return LoadOutcome(None, False)
        if why is not None:
            return LoadOutcome(None, True)
        self.book.set(info.version, VersionState.LOADING)
        self.bus.publish(LoadStarted(self.model, info.version, info.path))
        t0 = time.perf_counter()
        try:
            servable, measured, reports, keeper = self.pool.submit(self._load_blocking, info).result()
        except StorageUnavailable as exc:
            self.budget.release((self.model, info.version))
            self.book.set(info.version, VersionState.START, Code.UNAVAILABLE, f"waiting for the store: {exc}")
            return LoadOutcome(None, False, str(exc))
        except Exception as exc:
            self.budget.release((self.model, info.version))
            code = exc.code if isinstance(exc, HotserveError) else Code.UNKNOWN
            message = str(exc) if isinstance(exc, HotserveError) else f"{type(exc).__name__}: {exc}"
            self._fail(info, code, message, "failed", time.perf_counter() - t0)
            return LoadOutcome(None, True)
        seconds = time.perf_counter() - t0
        # RSS growth can undercount (pages shared or not yet touched): count at least the files.
        self.budget.commit((self.model, info.version), max(measured, info.size_bytes))
        st = self.book.get(info.version)
        if st is not None:
            st.load_seconds = seconds
            st.gates = reports
        self.book.set(info.version, VersionState.AVAILABLE)
        self.bus.publish(LoadFinished(self.model, info.version, seconds, measured, info.size_bytes))
        self._paths[info.version] = info.path
        lv = LoadedVersion(self.model, info.version, servable, keeper.revision, keeper.view(), keeper.state)
        keeper.attach(lv)
        return LoadOutcome(lv, False)

    def _load_blocking(self, info: VersionInfo) -> tuple[Servable, int, list[dict], ParameterKeeper]:
        rss0 = rss_of()
        local = self.storage.local_dir(info.path)  # remote: downloaded and verified into the cache
        try:
            ctx = GateContext(self.model, info.version, local, info.published,
                              sibling_dir=lambda v: self._sibling_dir(info, v))
            reports = self.gates.run(ctx, FILES)
            servable = load_servable(ctx.local_dir, self.runtime)
            ctx.servable = servable
            try:
                reports += self.gates.run(ctx, SERVABLE)
            except BaseException:
                servable.unload()
                raise
        except BaseException:
            self.storage.release_local_dir(info.path)
            raise
        # The gates judged the published files (revision 0); the version's parameter deltas are
        # replayed now, before it serves, so a restart serves the revision it served before.
        keeper = ParameterKeeper(self.model, info.version, servable, self.storage, info.path, self.bus)
        try:
            keeper.replay()
        except Exception as exc:
            self.bus.publish(Notice(self.model, info.version, "delta_replay_failed",
                                    f"version {info.version}: its delta log could not be replayed past revision "
                                    f"{keeper.revision} ({exc}); serving revision {keeper.revision}"))
        return servable, max(0, rss_of() - rss0), reports, keeper

    def _sibling_dir(self, info: VersionInfo, version: int) -> str:
        """Another version's local directory (paths end in /<version> on every store); '' if absent."""
        path = self.storage.join(info.path.rstrip("/").rsplit("/", 1)[0], str(version))
        return self.storage.local_dir(path) if self.storage.exists(path) else ""

    def _fail(self, info: VersionInfo, code: Code, message: str, outcome: str, seconds: float = 0.0) -> None:
        self.book.set(info.version, VersionState.END, code, message)
        self.bus.publish(LoadFailed(self.model, info.version, code.value, message, outcome, seconds))

    # -- unloading --------------------------------------------------------------------------
    def unload(self, lv: LoadedVersion) -> None:
        """Unload a drained version and free its memory reservation."""
        try:
            lv.servable.unload()
        except Exception as exc:
            self.bus.publish(Notice(self.model, lv.version, "unload_error", f"version {lv.version}: unload raised {exc!r}"))
        self.budget.release((self.model, lv.version))
        path = self._paths.pop(lv.version, None)
        if path is not None:
            self.storage.release_local_dir(path)
        self.book.set(lv.version, VersionState.END)
        self.bus.publish(Unloaded(self.model, lv.version))
