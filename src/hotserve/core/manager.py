"""The manager: every model of one server, with what they share (the load and unload pools,
the memory budget, the gate pipeline, the canary controller) and the config they follow.

Per-model work lives in ModelManager; this class adds, updates and removes models when the
config changes, binds requests to versions, and runs the periodic analysis (canary verdicts,
the inline-inference decision).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from hotserve.core.canary_controller import CanaryController
from hotserve.core.config import ModelConfig
from hotserve.core.gates import GatePipeline, RequestDecoder, standard_gates
from hotserve.core.inline import inline_ok
from hotserve.core.loaded import Bound
from hotserve.core.memory import MemoryBudget
from hotserve.core.model_manager import ManagerOptions, ModelManager
from hotserve.errors import NotFound, Unavailable, clip
from hotserve.observability.events import BUS, EventBus, ModelAdded, ModelRemoved
from hotserve.repository import cache
from hotserve.repository.routing_store import RoutingStore
from hotserve.repository.storage import normalize_base_path

__all__ = ["Manager", "ManagerOptions", "ModelManager"]

log = logging.getLogger("hotserve.manager")


class Manager:
    def __init__(self, configs: list[ModelConfig], options: ManagerOptions | None = None,
                 decoder: RequestDecoder | None = None, gates: GatePipeline | None = None, bus: EventBus = BUS,
                 store_factory: Callable[[ModelConfig], RoutingStore] | None = None) -> None:
        self.options = options or ManagerOptions()
        self.bus = bus
        # Where each model's routing intent lives: None is the file beside its versions; a
        # fleet passes ZooKeeper's (cluster/).
        self.store_factory = store_factory
        names = [c.name for c in configs]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {sorted(dupes)}")
        self._load_pool = ThreadPoolExecutor(max(1, self.options.num_load_threads), thread_name_prefix="load")
        self._unload_pool = ThreadPoolExecutor(max(1, self.options.num_unload_threads), thread_name_prefix="unload")
        self.budget = MemoryBudget(self.options.memory_budget_bytes)
        self.gates = gates or GatePipeline(standard_gates(decoder), bus)
        self.canary = CanaryController(bus)
        # The local copies remote stores hand runtimes (one cache per process, shared by its models).
        cache.configure(cache.VersionCache(self.options.model_cache_dir, self.options.model_cache_keep_unused,
                                           self.options.max_concurrent_downloads, self.options.load_jitter_seconds))
        # Replaced as a whole (copy on write) so readers can iterate without a lock.
        self.models: dict[str, ModelManager] = {c.name: self._new(c) for c in configs}
        self._config_lock = threading.Lock()
        self._stop = threading.Event()
        self._analysis = threading.Thread(target=self._analyze_loop, name="canary-analysis", daemon=True)

    def _new(self, config: ModelConfig) -> ModelManager:
        store = self.store_factory(config) if self.store_factory is not None else None
        mm = ModelManager(config, self.options, self._load_pool, self._unload_pool, self.budget, self.gates, store,
                          self.bus)
        self.bus.publish(ModelAdded(mm.name, mm.base_path))
        return mm

    def acquire(self, name: str, version: int | None = None, label: str | None = None,
                key: str | None = None) -> Bound:
        """Bind a request to one live (version, revision); the caller must release() it."""
        return self.get(name).route.acquire(version, label, key)

    def get(self, name: str) -> ModelManager:
        mm = self.models.get(name)
        if mm is None:
            raise NotFound(f"Servable not found for request: model {clip(name)!r} is not configured on this server")
        return mm

    def start(self) -> None:
        for mm in self.models.values():
            mm.start()
        self._analysis.start()

    def stop(self) -> None:
        self._stop.set()
        for mm in self.models.values():
            mm.stop()
        self.canary.close()
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
                    if self.options.canary_analysis:
                        self.canary.tick(mm, now)
                    mm.inline_ok = inline_ok(mm.route.table, self.options.inline_max_us, mm.inline_ok)
                except Exception:
                    log.exception("model %s: periodic analysis failed", mm.name)

    def apply_config(self, configs: list[ModelConfig], timeout: float | None = None) -> dict[str, str]:
        """Make the served models match `configs`: add, update, and remove (after draining).
        With a timeout, wait until every configured model is ready or failed; returns
        {model: "AVAILABLE" | reason} and raises Unavailable naming the models still loading."""
        with self._config_lock:
            current = self.models
            new: dict[str, ModelManager] = {}
            started = []
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
                self.bus.publish(ModelRemoved(mm.name))
                threading.Thread(target=mm.stop, name=f"remove-{mm.name}", daemon=True).start()
        if timeout is None:
            return {}
        deadline = time.monotonic() + timeout
        result: dict[str, str] = {}
        for c in configs:
            mm = self.models[c.name]
            while time.monotonic() < deadline:
                if mm.wait_idle(0.05) and (mm.is_ready() or mm.failed_versions() or mm.outage):
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
