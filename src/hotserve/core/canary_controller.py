"""Canary analysis in motion: watch each model's canary split, judge it (core/canary.py), and
act on the verdict by changing the model's routing intent.

The clock of a canary starts at the swap that opened its split (a Swapped event on the bus);
a verdict is announced (CanaryDecision, Rollback events) only once the route no longer
splits, so logs and metrics never claim a decision traffic does not yet see.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from hotserve.core import canary
from hotserve.core.model_manager import ModelManager
from hotserve.observability.events import BUS, CanaryDecision, EventBus, Record, Rollback, Swapped

_DONE = {"rollback": "rolled back", "promote": "promoted"}


@dataclass
class _Split:
    canary: int | None = None
    since: float | None = None  # monotonic time the split opened
    held: bool = False


class CanaryController:
    def __init__(self, bus: EventBus = BUS) -> None:
        self.bus = bus
        self._splits: dict[str, _Split] = {}
        self._lock = threading.Lock()
        self._unsubscribe = bus.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()

    def _on_event(self, record: Record) -> None:
        ev = record.event
        if not isinstance(ev, Swapped):
            return
        with self._lock:
            split = self._splits.setdefault(ev.model, _Split())
            if ev.canary != split.canary:
                split.canary = ev.canary
                split.since = time.monotonic() if ev.canary is not None else None
                split.held = False

    def tick(self, mm: ModelManager, now: float) -> None:
        t = mm.route.table
        cfg = mm.intent.canary_config
        with self._lock:
            split = self._splits.get(mm.name)
            since = split.since if split else None
            held = split.held if split else False
        if t.canary is None or t.default is None or cfg is None or since is None or held:
            return
        verdict = canary.analyze(cfg, since, now, t.default.stats.since(since), t.canary.stats.since(since))
        if verdict.decision == "wait":
            return
        v, stable = t.canary.version, t.default.version
        act = (verdict.decision == "rollback" and cfg.on_failure == "rollback") or (
            verdict.decision == "promote" and cfg.on_success == "promote")
        if not act:
            with self._lock:
                split.held = True
            self.bus.publish(CanaryDecision(mm.name, v, stable, f"{verdict.decision}_held",
                                            f"would be {_DONE[verdict.decision]}: {verdict.reason}"))
            return
        if mm.intent.state.labels.get("canary") != v:
            return  # moved meanwhile

        def fn(st):
            labels = dict(st.labels)
            rolled = dict(st.rolled_back)
            labels.pop("canary", None)
            if verdict.decision == "rollback":
                info = mm.complete_versions().get(v)
                if info is not None:
                    rolled[v] = info.fingerprint
            else:
                labels["stable"] = v
            return st.with_changes(labels=labels, rolled_back=rolled)

        mm.intent.change(fn, "canary", verdict.decision, v)
        # Announce the decision once it has taken effect: the route no longer splits when the
        # event is logged and counted (both versions are loaded, so this is a swap, not a load).
        mm.wait_reconciled(mm.trigger(), 30.0)
        self.bus.publish(CanaryDecision(mm.name, v, stable, verdict.decision, verdict.reason))
        if verdict.decision == "rollback":
            self.bus.publish(Rollback(mm.name, stable, v, "canary"))
