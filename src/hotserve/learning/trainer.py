"""The Trainer protocol: what `hotserve learn --trainer module:Class` runs.

A trainer holds one model state. The learner drives it:

    trainer.load(version_dir)    # the serving version (None: no version yet, start fresh)
    trainer.evaluate(holdout)    # metrics of the current state = the serving version's
    trainer.update(batch)        # train incrementally on new labelled examples (called per minibatch)
    trainer.evaluate(holdout)    # the candidate's metrics
    trainer.export(out_dir)      # write a version directory hotserve serves (model.onnx ...)
    trainer.load(version_dir)    # after a refused candidate: back to the serving state

and, optionally (parameter deltas, issue 12):

    trainer.delta() -> [{"name", "values", "rows"?}] | None  # what changed since the last load/export/commit
    trainer.commit_delta()                 # that delta was published: measure the next from here
    trainer.revert()                       # back to the last published state (a refused candidate)
    trainer.apply_updates([(name, values, rows or None)])  # replay the served version's delta log

`gate_metric` names the metric the gate compares (a key evaluate() returns) and
`higher_is_better` its direction. A trainer is built with keyword arguments from repeated
`--trainer_option key=value` (values are strings; the trainer parses them).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from hotserve.learning.store import Example


@dataclass
class Batch:
    """Labelled examples stacked along a new first (batch) dimension."""

    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    weights: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return len(self.weights)

    @classmethod
    def of(cls, examples: Sequence[Example]) -> "Batch":
        if not examples:
            return cls({}, {}, np.zeros(0, np.float32))
        inputs = {k: np.stack([e.inputs[k] for e in examples]) for k in examples[0].inputs}
        labels = {k: np.stack([e.label[k] for e in examples]) for k in examples[0].label}
        return cls(inputs, labels, np.asarray([e.weight for e in examples], np.float32))

    def slices(self, size: int):
        for i in range(0, len(self), size):
            yield Batch({k: v[i:i + size] for k, v in self.inputs.items()},
                        {k: v[i:i + size] for k, v in self.labels.items()}, self.weights[i:i + size])


@runtime_checkable
class Trainer(Protocol):
    gate_metric: str
    higher_is_better: bool

    def load(self, version_dir: str | None) -> None:
        """Take the state of a served version directory, or a fresh state (None)."""

    def update(self, batch: Batch) -> dict[str, float]:
        """Train on one minibatch; returns training figures (e.g. {"loss": ...})."""

    def evaluate(self, batch: Batch) -> dict[str, float]:
        """Metrics of the current state on `batch` (must include gate_metric)."""

    def export(self, out_dir: str) -> None:
        """Write the current state as a servable version directory."""


def load_trainer(spec: str, options: dict[str, str] | None = None) -> Trainer:
    """Build `module:Class` (or a factory function) with the options as keyword arguments."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--trainer must be module:Class, got {spec!r}")
    try:
        factory: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load trainer {spec!r}: {exc}") from None
    trainer = factory(**(options or {}))
    missing = [m for m in ("load", "update", "evaluate", "export", "gate_metric", "higher_is_better")
               if not hasattr(trainer, m)]
    if missing:
        raise ValueError(f"trainer {spec!r} lacks {missing}; see hotserve.learning.trainer.Trainer")
    return trainer


def binary_metrics(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> dict[str, float]:
    """log_loss, auc, accuracy of click probabilities p against 0/1 labels y (weighted)."""
    p = np.clip(np.asarray(p, np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    y = np.asarray(y, np.float64).reshape(-1)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64).reshape(-1)
    ll = float(-np.sum(w * (y * np.log(p) + (1 - y) * np.log(1 - p))) / max(np.sum(w), 1e-12))
    acc = float(np.sum(w * ((p >= 0.5) == (y >= 0.5))) / max(np.sum(w), 1e-12))
    return {"log_loss": ll, "auc": auc(p, y), "accuracy": acc}


def auc(p: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve by ranks (ties get their average rank); NaN with one class only."""
    p = np.asarray(p, np.float64).reshape(-1)
    y = np.asarray(y).reshape(-1) >= 0.5
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), np.float64)
    sp = p[order]
    i = 0
    while i < len(sp):  # average ranks over ties
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
