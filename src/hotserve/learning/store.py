"""The feedback store: logged predictions, labelled examples, and the learner's state.

Two implementations share this protocol (and one test suite): SQLite in WAL mode under
`--learning_dir` (one machine; the default) and Redis Streams (`--feedback_store redis://...`,
several servers feeding one learner).

- Predictions are kept for the *label window* (`--feedback_label_window`, default 1 h): that is
  how late a label may be. A label whose prediction is older (or was never logged, or was
  sampled out) is answered as an unknown request id and stored nowhere.
- Examples are append-only: a label joined to its prediction, or an example posted with its
  own inputs. Each gets a position in the model's stream, its *watermark* (an opaque string the
  store orders: SQLite's row id, Redis's stream id); a learner reads "examples after W".
  Retention (`--feedback_retention`) drops the oldest by age and by count.
- A feedback call is one transaction: after `add_feedback` returns, its examples are durable
  (SQLite: synchronous=FULL commit; Redis: the server must run appendonly with
  appendfsync always, which the store checks and warns about).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np


@dataclass
class PredictionBatch:
    """Logged requests of one model version whose tensors have the same names, shapes and types:
    inputs[name][k] is what request_ids[k] sent, outputs[name][k] what it got. The prediction log's
    writer groups queued requests this way, so a store writes each tensor of a batch as one
    stacked array ([n, *shape]) without copying the requests' arrays into one first."""

    model: str
    version: int
    request_ids: list[str]
    times: list[float]
    inputs: dict[str, list[np.ndarray]]
    outputs: dict[str, list[np.ndarray]]

    def __len__(self) -> int:
        return len(self.request_ids)

    def request(self, k: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """What request k sent and got."""
        return {n: v[k] for n, v in self.inputs.items()}, {n: v[k] for n, v in self.outputs.items()}


@dataclass
class Label:
    """A validated feedback item: the label for row `row` of a logged prediction."""

    request_id: str
    label: dict[str, np.ndarray]
    weight: float = 1.0
    row: int = 0


@dataclass
class NewExample:
    """A validated labelled example that was never predicted (inputs are one row)."""

    inputs: dict[str, np.ndarray]
    label: dict[str, np.ndarray]
    weight: float = 1.0


@dataclass
class Example:
    """A stored example, as the learner reads it."""

    watermark: str
    time: float  # when the store accepted it (unix seconds)
    inputs: dict[str, np.ndarray]  # one row
    label: dict[str, np.ndarray]
    weight: float = 1.0
    request_id: str | None = None  # set when joined to a logged prediction
    version: int | None = None  # the version that made that prediction
    predicted_at: float | None = None


@dataclass
class FeedbackResult:
    accepted: int
    unknown_request_ids: list[str]
    watermark: str | None  # the last stored example's position (None: nothing new stored)


@dataclass
class Retention:
    max_age_seconds: float | None = 7 * 86400.0
    max_count: int | None = 1_000_000
    label_window_seconds: float = 3600.0


@dataclass
class StoreStats:
    examples_stored: int = 0
    examples_added_total: int = 0
    labels_joined_total: int = 0
    predictions_logged_total: int = 0
    predictions_pending: int = 0  # logged within the label window, no label yet
    last_watermark: str | None = None
    extra: dict = field(default_factory=dict)


class FeedbackStore(Protocol):
    url: str
    retention: Retention

    def log_predictions(self, batches: Sequence[PredictionBatch]) -> None:
        """Append logged predictions (the prediction log's writer thread calls this)."""

    def add_feedback(self, model: str, labels: Sequence[Label], examples: Sequence[NewExample],
                     now: float) -> FeedbackResult:
        """Join labels to logged predictions and append examples, in one durable transaction.
        A label repeated for the same request id is accepted once (retries are safe)."""

    def examples_after(self, model: str, watermark: str | None, limit: int) -> list[Example]:
        """Up to `limit` examples after `watermark` (None: from the oldest kept), oldest first."""

    def recent_examples(self, model: str, limit: int) -> list[Example]:
        """The newest `limit` examples, oldest first (the learner's holdout seed)."""

    def stats(self, model: str, now: float) -> StoreStats:
        ...

    def set_learner_state(self, model: str, doc: dict) -> None:
        """The learner's current state (watermark, parent version, last candidate)."""

    def learner_state(self, model: str) -> dict | None:
        ...

    def append_learner_record(self, model: str, doc: dict) -> str:
        """Append one learner outcome (published / refused); returns its id."""

    def learner_records(self, model: str, after: str | None, limit: int = 100) -> list[tuple[str, dict]]:
        """Learner outcomes after id `after` (None: from the oldest kept), oldest first."""

    def prune(self, now: float) -> dict[str, int]:
        """Apply retention: drop examples by age and count, predictions past the label window."""

    def close(self) -> None:
        ...


def watermark_key(w: str | None) -> tuple[int, int]:
    """An orderable key for a watermark of either store ("123" or "1700000000000-3")."""
    if not w:
        return (-1, -1)
    a, _, b = w.partition("-")
    return (int(a), int(b or 0))


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)?$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration; expected e.g. 90s, 30m, 12h or 7d")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_retention(text: str, label_window: str = "1h") -> Retention:
    """--feedback_retention: 'AGE,COUNT' (e.g. '7d,1000000'), or one of them ('12h', '50000');
    'none' in a place keeps everything of that kind ('none,100000')."""
    parts = [p.strip().lower() for p in text.split(",")]
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"{text!r}: expected AGE,COUNT such as 7d,1000000 (or one of them)")
    age: float | None = Retention.max_age_seconds
    count: int | None = Retention.max_count
    for i, part in enumerate(parts):
        if part == "none":
            if len(parts) == 1:
                age = count = None
            elif i == 0:
                age = None
            else:
                count = None
        elif part.isdigit():
            count = int(part)
            if count < 1:
                raise ValueError("the retention count must be >= 1")
        else:
            age = parse_duration(part)
    window = parse_duration(label_window)
    if age is not None and age < window:
        raise ValueError(f"retention age {age:g}s is shorter than the label window {window:g}s "
                         "(--feedback_label_window): a late label would find its example gone")
    return Retention(age, count, window)
