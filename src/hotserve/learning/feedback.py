"""Feedback calls: validate a `:feedback` body against the model's signature, then store it in
one transaction.

    {"feedback": [{"request_id": "...", "label": <one output row>, "weight": 1.0}]}
    {"examples": [{"inputs": {"<input>": <one row>, ...}, "label": <one output row>, "weight": 1.0}]}

Both lists may come in one call. Everything is checked before anything is stored, so a bad
call stores nothing and says what was wrong (400), an oversized one is refused before parsing
(413), and an unknown model is 404. A label is shaped like one row of the model's output (a
single-output model takes the value itself; a model with several outputs takes
{"<output>": value}). A feedback item may name `row` (default 0) for a prediction of several
rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from hotserve import dtypes
from hotserve.errors import Code, HotserveError, InvalidArgument
from hotserve.learning.store import FeedbackResult, FeedbackStore, Label, NewExample
from hotserve.protocols.json_body import parse_object
from hotserve.runtimes.base import Signature, TensorSpec

MAX_ITEMS = 10_000
MAX_BODY_BYTES = 32 << 20
_ITEM_KEYS = {"request_id", "label", "weight", "row"}
_EXAMPLE_KEYS = {"inputs", "label", "weight"}


class FeedbackTooLarge(HotserveError):
    code = Code.RESOURCE_EXHAUSTED

    @property
    def http_status(self) -> int:
        return 413


@dataclass
class Parsed:
    labels: list[Label]
    examples: list[NewExample]


def check_size(n_bytes: int, max_bytes: int = MAX_BODY_BYTES) -> None:
    if n_bytes > max_bytes:
        raise FeedbackTooLarge(f"feedback body of {n_bytes} bytes is over the limit of {max_bytes}; "
                               "send it in several calls")


def _row_shape(spec: TensorSpec) -> tuple[int, ...] | None:
    return None if spec.shape is None else tuple(spec.shape[1:])


def _tensor(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """One row of `spec` from JSON, with the dtype and shape the model declares."""
    want = spec.dtype
    if want is dtypes.STRING:
        arr = np.asarray(value, dtype=object)
        flat = arr.reshape(-1)
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgument(f"{where}: expected strings ({spec.describe()} per row), got {value!r:.80}")
        out = np.empty(flat.size, dtype=object)
        out[:] = [v.encode() for v in flat]
        arr = out.reshape(arr.shape)
    else:
        try:
            raw = np.asarray(value)
        except (ValueError, TypeError):
            raise InvalidArgument(f"{where}: not a rectangular array of numbers: {value!r:.80}") from None
        if raw.dtype.kind not in "biuf":
            raise InvalidArgument(f"{where}: expected numbers of type {want.tf_name}, got {value!r:.80}")
        if raw.dtype.kind == "f" and want.numpy.kind in "iub" and not np.all(np.mod(raw, 1) == 0):
            raise InvalidArgument(f"{where}: expected whole numbers ({want.tf_name}), got {value!r:.80}")
        arr = raw.astype(want.numpy)
    shape = _row_shape(spec)
    if shape is not None:
        fits = len(shape) == arr.ndim and all(d < 0 or d == n for d, n in zip(shape, arr.shape))
        if not fits and arr.ndim == 0 and all(d == 1 for d in shape):
            arr, fits = arr.reshape(shape), True  # a bare number for a one-element row
        if not fits:
            dims = "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"
            raise InvalidArgument(f"{where}: shape {list(arr.shape)} does not fit one row of {spec.describe()} "
                                  f"(expected {dims})")
    return arr


def _label(value: Any, sig: Signature, where: str) -> dict[str, np.ndarray]:
    if len(sig.outputs) == 1:
        (name, spec), = sig.outputs.items()
        if isinstance(value, dict) and set(value) == {name}:
            value = value[name]
        return {name: _tensor(value, spec, f"{where}.label")}
    if not isinstance(value, dict) or not value:
        raise InvalidArgument(f"{where}.label: this model has outputs {sorted(sig.outputs)}; give the label as "
                              '{"<output>": <row>, ...}')
    unknown = sorted(set(value) - set(sig.outputs))
    if unknown:
        raise InvalidArgument(f"{where}.label: unknown output(s) {unknown}; the model has {sorted(sig.outputs)}")
    return {k: _tensor(v, sig.outputs[k], f"{where}.label.{k}") for k, v in value.items()}


def _weight(item: dict, where: str) -> float:
    w = item.get("weight", 1.0)
    if not isinstance(w, (int, float)) or isinstance(w, bool) or not (w > 0 and np.isfinite(w)):
        raise InvalidArgument(f"{where}.weight must be a positive number, got {w!r}")
    return float(w)


def _check_item(item: Any, where: str, keys: set[str], required: str, allowed: str) -> None:
    """One entry of "feedback" or "examples": an object, no unknown key, a label."""
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where} must be an object with {required}")
    extra = sorted(set(item) - keys)
    if extra:
        raise InvalidArgument(f"{where}: unknown key(s) {extra}; expected {allowed}")
    if "label" not in item:
        raise InvalidArgument(f"{where}: missing 'label'")


def _list(doc: dict, key: str) -> list:
    items = doc.get(key, [])
    if not isinstance(items, list):
        raise InvalidArgument(f"'{key}' must be a list, got a JSON {type(items).__name__}")
    return items


def parse(body: bytes, sig: Signature, max_items: int = MAX_ITEMS) -> Parsed:
    check_size(len(body))
    doc = parse_object(body, 'a JSON object with a "feedback" and/or "examples" list')
    unknown = sorted(set(doc) - {"feedback", "examples"})
    if unknown:
        raise InvalidArgument(f"unknown key(s) {unknown}; a feedback body has \"feedback\" and/or \"examples\"")
    feedback, examples = _list(doc, "feedback"), _list(doc, "examples")
    if not feedback and not examples:
        raise InvalidArgument('nothing to store: give {"feedback": [{"request_id": ..., "label": ...}]} '
                              'or {"examples": [{"inputs": {...}, "label": ...}]}')
    if len(feedback) + len(examples) > max_items:
        raise FeedbackTooLarge(f"{len(feedback) + len(examples)} items in one call; the limit is {max_items}")
    labels = []
    for i, item in enumerate(feedback):
        where = f"feedback[{i}]"
        _check_item(item, where, _ITEM_KEYS, "request_id and label", "request_id, label, weight, row")
        rid = item.get("request_id")
        if not isinstance(rid, str) or not rid:
            raise InvalidArgument(f"{where}.request_id must be a non-empty string (the id the prediction answered with)")
        row = item.get("row", 0)
        if not isinstance(row, int) or isinstance(row, bool) or row < 0:
            raise InvalidArgument(f"{where}.row must be a non-negative integer, got {row!r}")
        labels.append(Label(rid, _label(item["label"], sig, where), _weight(item, where), row))
    news = []
    for i, item in enumerate(examples):
        where = f"examples[{i}]"
        _check_item(item, where, _EXAMPLE_KEYS, "inputs and label", "inputs, label, weight")
        inputs = item.get("inputs")
        if not isinstance(inputs, dict):
            raise InvalidArgument(f"{where}.inputs must be an object mapping each model input to one row")
        missing = sorted(set(sig.inputs) - set(inputs))
        wrong = sorted(set(inputs) - set(sig.inputs))
        if missing or wrong:
            raise InvalidArgument(f"{where}.inputs: the model takes {sorted(sig.inputs)}"
                                  + (f"; missing {missing}" if missing else "") + (f"; unknown {wrong}" if wrong else ""))
        row = {k: _tensor(v, sig.inputs[k], f"{where}.inputs.{k}") for k, v in inputs.items()}
        news.append(NewExample(row, _label(item["label"], sig, where), _weight(item, where)))
    return Parsed(labels, news)


def store(store: FeedbackStore, model: str, parsed: Parsed, now: float | None = None) -> FeedbackResult:
    return store.add_feedback(model, parsed.labels, parsed.examples, time.time() if now is None else now)
