"""The accuracy gate, and the metrics it (and `hotserve optimize`) scores a model with.

A version asks for the gate in its manifest:

    "gates": {"accuracy": {"eval": "eval.npz", "metric": "accuracy",
                           "min": 0.95, "max_drop": 0.01, "parent": 6}}

`eval` is a file inside the version (listed and digest-checked by the manifest like any other)
holding one array per model input plus `label`. The version's servable is run over it and
scored with `metric`; the gate refuses the version when the score is below `min` (`max` for a
lower-is-better bound), or when it is more than `max_drop` worse than the parent version's
score on the same data (`parent` defaults to the manifest's `lineage.parent_version`). A
refused version ends in END with the numbers in its status and never receives traffic.

The metrics are plain numpy so core needs nothing more; `hotserve.compress` uses the same
functions, so a variant is scored the same way at optimize time and at load time.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping

import numpy as np

from hotserve.errors import HotserveError, InvalidArgument, LoadError
from hotserve.core.gates.pipeline import SERVABLE, GateContext
from hotserve.runtimes.base import DEFAULT_SIGNATURE, Servable, Signature, get_signature

METRICS = ("accuracy", "auc", "logloss", "mse")
HIGHER_IS_BETTER = {"accuracy": True, "auc": True, "logloss": False, "mse": False}
LABEL = "label"
EVAL_BATCH = 256  # rows per predict call while evaluating: bounded memory, few calls
_EPS = 1e-15


# -- metrics -------------------------------------------------------------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Scores as an [n, classes] probability matrix. A model may output probabilities or raw
    scores (logits): rows already in [0, 1] summing to 1 are taken as they are, anything else
    goes through softmax (sigmoid for a single column), so one metric fits both kinds."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1 or (s.ndim == 2 and s.shape[1] == 1):
        p1 = s.reshape(-1)
        if p1.size and (p1.min() < 0 or p1.max() > 1):
            p1 = 1.0 / (1.0 + np.exp(-p1))
        return np.stack([1.0 - p1, p1], axis=1)
    if s.ndim != 2:
        raise InvalidArgument(f"a classification output must be [n] or [n, classes], got shape {list(s.shape)}")
    if s.size and s.min() >= 0 and s.max() <= 1 and np.allclose(s.sum(axis=1), 1.0, atol=1e-3):
        return s
    return _softmax(s)


def _class_labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if y.shape[0] != n:
        raise InvalidArgument(f"'{LABEL}' has {y.shape[0]} rows, the predictions {n}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InvalidArgument(f"'{LABEL}' must hold class indices (integers) for a classification metric")
    elif y.dtype.kind not in "iub":
        raise InvalidArgument(f"'{LABEL}' must hold class indices, got dtype {y.dtype}")
    return y.astype(np.int64)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based average rank of ties
    return ranks


def _binary_auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    npos = int(positive.sum())
    nneg = positive.size - npos
    if npos == 0 or nneg == 0:
        return None
    ranks = _average_ranks(score)
    return float((ranks[positive].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def score(metric: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """One number for predictions against labels: accuracy (share of argmax hits), auc (ROC
    AUC; macro one-vs-rest for several classes), logloss (mean negative log-likelihood of the
    true class) or mse (mean squared error)."""
    pred = np.asarray(predictions)
    n = pred.shape[0] if pred.ndim else 0
    if n == 0:
        raise InvalidArgument("no rows to evaluate")
    if metric == "mse":
        y = np.asarray(labels, dtype=np.float64)
        p = pred.astype(np.float64)
        if y.size != p.size:
            raise InvalidArgument(f"'{LABEL}' has {y.size} values, the predictions {p.size} (shape {list(p.shape)})")
        return float(np.mean((p.reshape(-1) - y.reshape(-1)) ** 2))
    if metric not in METRICS:
        raise InvalidArgument(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    probs = probabilities(pred)
    y = _class_labels(labels, probs.shape[0])
    k = probs.shape[1]
    if y.min() < 0 or y.max() >= k:
        raise InvalidArgument(f"'{LABEL}' holds classes {int(y.min())}..{int(y.max())}, the model outputs {k} class(es)")
    if metric == "accuracy":
        return float(np.mean(probs.argmax(axis=1) == y))
    if metric == "logloss":
        return float(-np.mean(np.log(np.clip(probs[np.arange(n), y], _EPS, 1.0))))
    aucs = [a for c in (range(1, 2) if k == 2 else range(k))
            if (a := _binary_auc(probs[:, c], y == c)) is not None]
    if not aucs:
        raise InvalidArgument(f"auc needs both positive and negative examples; '{LABEL}' holds one class only")
    return float(np.mean(aucs))


def drop(metric: str, parent: float, variant: float) -> float:
    """How much worse variant is than parent (positive = worse), whatever the metric's direction."""
    return (parent - variant) if HIGHER_IS_BETTER[metric] else (variant - parent)


# -- evaluation data -----------------------------------------------------------------------------
def load_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (no pickled objects)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{path} is not a readable .npz of numeric arrays: {exc}") from exc


def split_inputs(data: Mapping[str, np.ndarray], sig: Signature, where: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(model inputs cast to the signature's dtypes, labels) from an evaluation data set; says
    which arrays are missing or do not line up."""
    if LABEL not in data:
        raise InvalidArgument(f"{where} has no '{LABEL}' array; it holds {sorted(data)}, expected one array per "
                              f"model input ({', '.join(sig.inputs)}) plus '{LABEL}'")
    missing = [n for n in sig.inputs if n not in data]
    if missing:
        raise InvalidArgument(f"{where} lacks array(s) for model input(s) {missing}; it holds {sorted(data)}")
    labels = data[LABEL]
    rows = labels.shape[0] if labels.ndim else 0
    inputs = {}
    for name, spec in sig.inputs.items():
        arr = data[name]
        if arr.ndim == 0 or arr.shape[0] != rows:
            raise InvalidArgument(f"{where}: input {name!r} has {arr.shape[0] if arr.ndim else 0} rows, '{LABEL}' {rows}")
        want = spec.dtype.numpy
        if arr.dtype != want:
            if not (np.can_cast(arr.dtype, want, "same_kind") or (arr.dtype.kind in "iub" and want.kind in "iuf")):
                raise InvalidArgument(f"{where}: input {name!r} is {arr.dtype}, the model takes {want}")
            arr = arr.astype(want)
        inputs[name] = arr
    return inputs, labels


def select_output(sig: Signature, output: str | None) -> str:
    names = list(sig.outputs)
    if output is not None:
        if output not in sig.outputs:
            raise InvalidArgument(f"the model has no output {output!r}; its outputs are {names}")
        return output
    if len(names) == 1:
        return names[0]
    raise InvalidArgument(f"the model has {len(names)} outputs {names}; name the one to score")


def predict_rows(predict: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
                 inputs: Mapping[str, np.ndarray], output: str, batch: int = EVAL_BATCH) -> np.ndarray:
    """The output for every row, predicted batch by batch."""
    rows = next(iter(inputs.values())).shape[0]
    parts = []
    for start in range(0, rows, batch):
        out = predict({k: v[start:start + batch] for k, v in inputs.items()})
        parts.append(np.asarray(out[output]))
    return np.concatenate(parts, axis=0)


def evaluate(servable: Servable, data: Mapping[str, np.ndarray], metric: str, output: str | None = None,
             signature_name: str | None = None, where: str = "evaluation data") -> float:
    """Score a loaded servable on an evaluation data set."""
    sig_name = signature_name or DEFAULT_SIGNATURE
    sig = get_signature(servable, sig_name)
    inputs, labels = split_inputs(data, sig, where)
    out = select_output(sig, output)
    return score(metric, predict_rows(lambda x: servable.predict(x, sig_name), inputs, out), labels)


# -- the gate ------------------------------------------------------------------------------------
_SPEC_KEYS = ("eval", "metric", "min", "max", "max_drop", "parent", "output", "signature_name")
_SHAPE = ('{"eval": "<file in the version>.npz", "metric": "accuracy|auc|logloss|mse", '
          '"min": N and/or "max": N and/or "max_drop": N (vs "parent", default lineage.parent_version), '
          '"output": "<name>" (when the model has several)}')


def _number(spec: dict, key: str) -> float | None:
    v = spec.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise LoadError(f"gates.accuracy: {key!r} must be a finite number, got {v!r}")
    return float(v)


def parse_spec(manifest: dict) -> dict[str, Any]:
    """The manifest's accuracy gate request, checked; LoadError says what is wrong."""
    spec = manifest.get("gates", {}).get("accuracy")
    if not isinstance(spec, dict):
        raise LoadError(f"gates.accuracy must be an object {_SHAPE}")
    extra = [k for k in spec if k not in _SPEC_KEYS]
    if extra:
        raise LoadError(f"gates.accuracy: unknown key(s) {extra}; allowed keys are {list(_SPEC_KEYS)}")
    metric = spec.get("metric")
    if metric not in METRICS:
        raise LoadError(f"gates.accuracy: 'metric' must be one of {', '.join(METRICS)}, got {metric!r}")
    path = spec.get("eval")
    if not isinstance(path, str) or not path or os.path.isabs(path) or ".." in path.replace("\\", "/").split("/"):
        raise LoadError(f"gates.accuracy: 'eval' must name a file inside the version (a relative path), got {path!r}")
    out = {"metric": metric, "eval": path, "output": spec.get("output"), "signature_name": spec.get("signature_name")}
    for key in ("min", "max", "max_drop"):
        out[key] = _number(spec, key)
    if out["min"] is None and out["max"] is None and out["max_drop"] is None:
        raise LoadError("gates.accuracy: give a bound: 'min', 'max' and/or 'max_drop'")
    if out["max_drop"] is not None:
        parent = spec.get("parent", manifest.get("lineage", {}).get("parent_version"))
        if isinstance(parent, bool) or not isinstance(parent, int) or parent < 0:
            raise LoadError("gates.accuracy: 'max_drop' compares with a parent version: give 'parent' (a version "
                            f"number) or a lineage.parent_version in the manifest; got {parent!r}")
        out["parent"] = parent
    return out


class AccuracyGate:
    """Scores the version on the evaluation file its manifest names; refuses it below its bound
    or more than max_drop worse than its parent on the same data."""

    name = "accuracy"
    stage = SERVABLE

    def __init__(self, load: Callable[[str], Servable] | None = None) -> None:
        # How to load the parent for a max_drop comparison (the server passes its runtime options).
        self._load = load

    def applies(self, ctx: GateContext) -> bool:
        return bool(ctx.manifest) and "accuracy" in (ctx.manifest.get("gates") or {})

    def run(self, ctx: GateContext) -> dict[str, Any]:
        spec = parse_spec(ctx.manifest)
        metric = spec["metric"]
        where = f"gates.accuracy eval file {spec['eval']!r}"
        path = os.path.join(ctx.local_dir, spec["eval"])
        if not os.path.isfile(path):
            raise LoadError(f"{where}: the version holds no such file")
        try:
            data = load_npz(path)
            value = evaluate(ctx.servable, data, metric, spec["output"], spec["signature_name"], where)
        except HotserveError as exc:
            raise LoadError(f"accuracy gate: {exc}") from exc
        report: dict[str, Any] = {"metric": metric, "value": round(value, 6), "rows": int(len(data["label"]))}
        if spec["min"] is not None and value < spec["min"]:
            raise LoadError(f"accuracy gate: {metric} {value:.4f} on {spec['eval']} is below the minimum {spec['min']:g}")
        if spec["max"] is not None and value > spec["max"]:
            raise LoadError(f"accuracy gate: {metric} {value:.4f} on {spec['eval']} is above the maximum {spec['max']:g}")
        if spec["max_drop"] is not None:
            parent = spec["parent"]
            base = self._parent_value(ctx, parent, data, spec, where)
            d = drop(metric, base, value)
            report.update(parent=parent, parent_value=round(base, 6), drop=round(d, 6))
            if d > spec["max_drop"] + 1e-12:
                raise LoadError(f"accuracy gate: {metric} {value:.4f} vs parent version {parent}'s {base:.4f} on "
                                f"{spec['eval']}: a drop of {d:.4f}, over max_drop {spec['max_drop']:g}")
        return report

    def _parent_value(self, ctx: GateContext, parent: int, data: dict, spec: dict, where: str) -> float:
        if ctx.sibling_dir is None:
            raise LoadError("accuracy gate: max_drop needs the parent version, and this loader cannot reach it")
        try:
            parent_dir = ctx.sibling_dir(parent)
        except Exception as exc:
            raise LoadError(f"accuracy gate: cannot reach parent version {parent}: {exc}") from exc
        if not parent_dir or not os.path.isdir(parent_dir):
            raise LoadError(f"accuracy gate: parent version {parent} is not in the repository; max_drop has nothing "
                            "to compare with (use 'min' instead)")
        from hotserve.runtimes.registry import load_servable

        servable = None
        try:
            servable = (self._load or load_servable)(parent_dir)
            return evaluate(servable, data, spec["metric"], spec["output"], spec["signature_name"], where)
        except HotserveError as exc:
            raise LoadError(f"accuracy gate: parent version {parent}: {exc}") from exc
        finally:
            if servable is not None:
                servable.unload()
