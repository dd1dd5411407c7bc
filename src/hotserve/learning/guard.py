"""The delta guard (Ekko-style): a parameter delta that makes the online metric worse is reverted.

After each applied delta (any source: the API, the learner, another worker), the guard waits for
`min_examples` labelled examples to reach the feedback store after the delta, then scores both the
new revision and the one it was built on, on those same fresh examples (the parent's state is
rebuilt from the kept undo data, copy-on-write, without serving it). When the new revision's metric
is worse than its parent's by more than `margin`, it rolls back to the parent (a durable rollback
entry in the delta log, so every worker and replica follows): a `delta_reverted` event with source
`guard`, `hotserve_parameter_deltas_total{outcome="reverted_guard"}`, and a log line naming both
metrics. Comparing both revisions on the same examples rather than the new revision's live
predictions against the old one's keeps traffic drift out of the verdict.

The metric: log loss when the model's first output is one probability per row and labels are
0/1, else mean squared error (lower is better either way).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from hotserve.learning.store import FeedbackStore
from hotserve.learning.trainer import Batch, binary_metrics
from hotserve.observability.events import BUS, DeltaApplied, EventBus, Notice, Record

log = logging.getLogger("hotserve.guard")

# Examples looked back through to find where a delta's examples start.
_LOOK_BACK = 5000


@dataclass
class _Check:
    model: str
    version: int
    revision: int
    parent: int
    applied: float  # unix time the delta served: examples stored after it are the delta's
    deadline: float
    watermark: str | None = None


class DeltaGuard:
    def __init__(self, manager, store: FeedbackStore, margin: float, min_examples: int = 200,
                 wait_seconds: float = 600.0, bus: EventBus = BUS) -> None:
        self.manager = manager
        self.store = store
        self.margin = margin
        self.min_examples = max(1, min_examples)
        self.wait_seconds = wait_seconds
        self.bus = bus
        self._checks: queue.Queue[_Check] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delta-guard", daemon=True)
        self._unsubscribe = None

    def start(self) -> "DeltaGuard":
        self._unsubscribe = self.bus.subscribe(self._on_event)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._thread.join(5)

    def _on_event(self, record: Record) -> None:
        ev = record.event
        if isinstance(ev, DeltaApplied):
            # The store is read in the guard's thread (a store call is no subscriber's work); the
            # delta's time says which examples are its.
            self._checks.put(_Check(ev.model, ev.version, ev.revision, ev.parent, record.time, time.monotonic()))

    def _run(self) -> None:
        pending: list[_Check] = []
        while not self._stop.is_set():
            try:
                check = self._checks.get(timeout=0.2)
                check.watermark = self._watermark_before(check.model, check.applied)
                check.deadline += self.wait_seconds
                pending.append(check)
            except queue.Empty:
                pass
            for check in list(pending):
                try:
                    if self._evaluate(check):
                        pending.remove(check)
                except Exception:
                    log.exception("delta guard: checking model %s version %d revision %d failed", check.model,
                                  check.version, check.revision)
                    pending.remove(check)

    def _watermark_before(self, model: str, t: float) -> str | None:
        """The watermark of the newest example stored before unix time t (None: from the start)."""
        recent = self.store.recent_examples(model, _LOOK_BACK)
        before = [e for e in recent if e.time < t]
        if before:
            return before[-1].watermark
        return recent[0].watermark if len(recent) == _LOOK_BACK else None

    def _evaluate(self, check: _Check) -> bool:
        """True when the check is finished (decided, superseded or expired)."""
        mm = self.manager.models.get(check.model)
        keeper = None
        for lv in (mm.loaded() if mm is not None else []):
            if lv.version == check.version:
                keeper = lv.params
        if keeper is None or keeper.revision != check.revision:
            return True  # unloaded, or another delta or rollback came since: that one is checked instead
        if time.monotonic() > check.deadline:
            self.bus.publish(Notice(check.model, check.version, "guard_expired",
                                    f"delta guard: revision {check.revision} got fewer than {self.min_examples} labelled "
                                    f"examples within {self.wait_seconds:g}s; kept"))
            return True
        examples = [e for e in self.store.examples_after(check.model, check.watermark, self.min_examples * 2)
                    if e.time >= check.applied][:self.min_examples]
        if len(examples) < self.min_examples:
            return False
        batch = Batch.of(examples)
        with keeper.locked():
            new_view, parent_view = keeper.view_of(check.revision), keeper.view_of(check.parent)
            if parent_view is None:
                return True  # the parent is beyond the kept history: nothing cheap to compare with
            new_m, name = _metric(new_view, batch)
            old_m, _ = _metric(parent_view, batch)
        worse = new_m - old_m
        log.info("delta guard: model %s version %d revision %d %s %.4f vs revision %d %.4f on %d fresh examples",
                 check.model, check.version, check.revision, name, new_m, check.parent, old_m, len(examples))
        if worse > self.margin:
            keeper.rollback(check.parent, reason=f"{name} {new_m:.4f} vs {old_m:.4f} for revision {check.parent} on "
                                                 f"{len(examples)} fresh examples: worse by {worse:.4f} > margin "
                                                 f"{self.margin:g}", source="guard")
        return True


def _metric(view, batch: Batch) -> tuple[float, str]:
    out = next(iter(view.predict(batch.inputs).values()))
    label = next(iter(batch.labels.values()))
    p = np.asarray(out, np.float64).reshape(len(batch), -1)
    y = np.asarray(label, np.float64).reshape(len(batch), -1)
    if p.shape[1] == 1 and y.shape[1] == 1 and np.isin(y, (0.0, 1.0)).all() and ((p >= 0) & (p <= 1)).all():
        return binary_metrics(p, y, batch.weights)["log_loss"], "log_loss"
    return float(np.average(((p - y) ** 2).mean(axis=1), weights=batch.weights)), "mse"
