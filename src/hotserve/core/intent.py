"""A model's routing intent: what operators, the config and canary analysis asked for.

The intent is kept in a RoutingStore (a file beside the versions; ZooKeeper for a fleet), so a
restart or a sibling worker comes back to the same labels, pin and rollbacks. Changes are
read-modify-write with compare-and-set; a change another writer made arrives through the
store's watch and is adopted. The config's part (policy, canary settings, its labels) is
combined here into the planner's Intent.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from hotserve.core.config import CanaryConfig, ModelConfig
from hotserve.core.planner import Intent
from hotserve.observability.events import BUS, EventBus, RoutingChanged
from hotserve.repository import routing_store
from hotserve.repository.routing_store import RoutingState, RoutingStore
from hotserve.repository.storage import StorageUnavailable


class IntentKeeper:
    def __init__(self, model: str, config: ModelConfig, store: RoutingStore, bus: EventBus = BUS,
                 fleet: bool = False) -> None:
        self.model = model
        self.fleet = fleet  # a fleet's replica: the fleet's target decides what serves
        self.store = store
        self.bus = bus
        self._lock = threading.Lock()
        self.config = config
        try:
            saved, _ = store.read()
        except StorageUnavailable:
            saved = None
        self.restored = saved is not None
        self.state = saved or RoutingState(labels=dict(config.labels))

    @property
    def canary_config(self) -> CanaryConfig | None:
        return self.config.canary

    def canary_weight(self) -> float:
        w = self.state.canary_weight
        if w is not None:
            return w
        return self.config.canary.weight if self.config.canary else 0.0

    def intent(self) -> Intent:
        with self._lock:
            st, cfg = self.state, self.config
        return Intent(
            policy=cfg.policy,
            labels=dict(st.labels),
            pinned=st.pinned,
            rolled_back=frozenset(st.rolled_back),
            canary_weight=self.canary_weight(),
            auto_canary=bool(cfg.canary and cfg.canary.auto),
            unloaded=st.unloaded,
            fleet=self.fleet,
            fleet_target=st.fleet_target,
            prepare=frozenset(st.prepare) | frozenset(v for v, until in st.keep.items() if until > time.time()),
        )

    def wake_in(self) -> float | None:
        """Seconds until a kept version's time runs out (the plan changes then), or None."""
        now = time.time()
        left = [until - now for until in self.state.keep.values() if until > now]
        return min(left) if left else None

    def change(self, fn: Callable[[RoutingState], RoutingState], source: str, action: str,
               version: int | None = None) -> RoutingState:
        """Apply fn to the stored state (compare-and-set, retried) and adopt the result."""
        with self._lock:
            try:
                new, _ = routing_store.update(self.store, fn)
            except StorageUnavailable:
                new = fn(self.state)  # the store is down: act now, persist on the next change
            self.state = new
        self.bus.publish(RoutingChanged(self.model, source, action, dict(new.labels), new.pinned, version))
        return new

    def set_config(self, config: ModelConfig) -> None:
        """A reloaded config: its labels replace the current ones only if the config's labels
        changed; its canary weight applies when it names one."""
        labels_changed = config.labels != self.config.labels
        with self._lock:
            self.config = config

        def fn(st: RoutingState) -> RoutingState:
            kw = {}
            if labels_changed:
                kw["labels"] = dict(config.labels)
            if config.canary is not None:
                kw["canary_weight"] = None  # the config's weight again
            return st.with_changes(**kw) if kw else st

        if labels_changed or config.canary is not None:
            self.change(fn, "config", "reload")

    def adopt_stored(self) -> bool:
        """Another writer changed the store: take its state; True if it differs from ours."""
        try:
            saved, _ = self.store.read()
        except StorageUnavailable:
            return False
        if saved is None:
            return False
        with self._lock:
            if saved == self.state:
                return False
            self.state = saved
        self.bus.publish(RoutingChanged(self.model, "peer", "adopt", dict(saved.labels), saved.pinned))
        return True
