"""The learner: `hotserve learn`, a process of its own beside the server (its training never
takes the serving process's GIL).

Each round: read labelled examples past the watermark from the feedback store; every
`holdout_every`-th example (by its position) goes to a rolling holdout of recent feedback
instead of training. When `--every_examples` new training examples have arrived, or
`--every_seconds` passed with some waiting, the trainer (holding the serving version's state)
is evaluated on the holdout, trained on the new examples, evaluated again, and the gate
decides: the candidate is published through the repository (stage + commit, with its lineage
in the manifest) unless its gate metric is worse than the serving version's by more than
`--max_metric_drop`. The first version has no baseline and is published as it is. A refused
candidate is dropped (the trainer goes back to the serving state); its examples are not
retried. Every outcome is a record in the store (the server republishes it as an event and a
metric), a log line naming the metrics, and the learner's state.

On restart the learner starts from the newest version in the repository and, when the learner
made it, from the watermark in its lineage: examples that fed refused or unpublished candidates
are read again.

`--publish deltas` (parameter deltas, docs/parameters.md): a candidate that passes the gate is
published as a delta of the serving version instead, the tensors and embedding rows that changed
(`trainer.delta()`), written to the version's delta log through Storage (the servers follow the
log and serve it as a new revision within milliseconds); every `--full_every` deltas, or when
`--full_every_seconds` passed, a full version is published as before (sparse often, dense
rarely). The learner's state is the served revision's: at start it replays the version's log
into the trainer (`trainer.apply_updates`), and a refused candidate goes back to the last
published state (`trainer.revert`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import zlib
from collections import deque

import numpy as np
from dataclasses import dataclass, field

from hotserve.learning.store import Example, FeedbackStore, watermark_key
from hotserve.learning.trainer import Batch, Trainer
from hotserve.observability import events, metrics
from hotserve.repository import manifest
from hotserve.repository.deltas import DeltaLog, chain_to, encode_updates
from hotserve.repository.publish import PublishError, publish
from hotserve.repository.scanner import list_version_numbers
from hotserve.repository.storage import StorageUnavailable, normalize_base_path, storage_for

log = logging.getLogger("hotserve.learner")

_HEARTBEAT_SECONDS = 5.0


@dataclass
class LearnerOptions:
    every_examples: int = 256  # train once this many new training examples are waiting...
    every_seconds: float = 5.0  # ...or this long passed with at least one waiting (0: only by count)
    max_metric_drop: float = 0.0  # the candidate may be this much worse than the serving version
    gate_metric: str | None = None  # default: the trainer's
    holdout_every: int = 10  # every Nth example (by position) is held out for evaluation
    holdout_size: int = 2000  # the most recent held-out examples the gate evaluates on
    min_holdout: int = 50  # no publish on fewer held-out examples (except the first version)
    epochs: int = 1
    poll_seconds: float = 0.1
    read_limit: int = 20_000
    trainer_spec: str = ""
    keep_versions: int = 20  # learner-made versions kept in the repository (0: all); never the serving one
    publish: str = "versions"  # versions | deltas
    full_every: int = 20  # with deltas: a full version after this many deltas (0: never by count)
    full_every_seconds: float = 0.0  # ...or when this long passed since the last full version (0: never by time)


@dataclass
class RoundResult:
    outcome: str  # published | refused | failed | waiting
    version: int | None = None
    parent: int | None = None
    candidate_metrics: dict = field(default_factory=dict)
    parent_metrics: dict = field(default_factory=dict)
    examples: int = 0
    watermark: str | None = None
    reason: str = ""
    seconds: dict = field(default_factory=dict)
    revision: int | None = None  # with --publish deltas: the revision the delta became


class Learner:
    def __init__(self, model: str, base_path: str, trainer: Trainer, store: FeedbackStore,
                 options: LearnerOptions | None = None, bus: events.EventBus = events.BUS) -> None:
        self.model = model
        self.base_path = normalize_base_path(base_path)
        self.storage = storage_for(self.base_path)
        self.trainer = trainer
        self.store = store
        self.opts = options or LearnerOptions()
        self.bus = bus
        self.metric = self.opts.gate_metric or trainer.gate_metric
        self.parent: int | None = None  # the version the trainer's state is (the serving one)
        self.watermark: str | None = None  # last example read
        self.trained_watermark: str | None = None  # last example the parent was trained on
        self.pending: list[Example] = []
        self.holdout: deque[Example] = deque(maxlen=self.opts.holdout_size)
        self.examples_total = 0
        self.last_candidate: dict | None = None
        self._last_round = time.monotonic()
        self._last_full = time.monotonic()
        self.deltas_since_full = 0
        self._saved = 0.0
        self._stop = threading.Event()

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the newest version in the repository (or start fresh) and its watermark."""
        self.storage.makedirs(self.base_path)
        newest = self._newest_version()
        if newest is None:
            self.trainer.load(None)
        else:
            self._adopt(newest)
        self.watermark = self.trained_watermark
        seed = self.store.recent_examples(self.model, self.opts.holdout_size * self.opts.holdout_every)
        for ex in seed:
            if self._held_out(ex) and watermark_key(ex.watermark) <= watermark_key(self.watermark):
                self.holdout.append(ex)
        log.info("learner for model %s: starting from %s, watermark %s, %d held-out example(s)", self.model,
                 f"version {self.parent}" if self.parent is not None else "a fresh model", self.watermark,
                 len(self.holdout))
        self._save_state()

    def _newest_version(self, above: int | None = None) -> int | None:
        """The newest complete (published) version, looking only above `above`."""
        for v in reversed(list_version_numbers(self.storage, self.base_path)):
            if above is not None and v <= above:
                return None
            if self.storage.exists(self.storage.join(self.base_path, str(v), manifest.MANIFEST_NAME)):
                return v
        return None

    def _version_dir(self, version: int) -> str:
        return self.storage.local_dir(self.storage.join(self.base_path, str(version)))

    def _adopt(self, version: int) -> None:
        """Make `version` the trainer's state and the parent of the next candidate."""
        path = self.storage.join(self.base_path, str(version))
        self.trainer.load(self._version_dir(version))
        lineage = {}
        try:
            lineage = manifest.read(path, self.storage).get("lineage") or {}
        except Exception:
            pass
        if lineage.get("source") == "learner" and lineage.get("model", self.model) == self.model:
            self.trained_watermark = lineage.get("watermark")
        self.parent = version
        self.deltas_since_full = 0
        if self.opts.publish == "deltas":
            self._replay_deltas(path)

    def _replay_deltas(self, path: str) -> None:
        """The served state is the version plus its delta log: bring the trainer there."""
        log_ = DeltaLog(self.storage, path)
        entries = [log_.entry(s) for s in log_.commits()]
        if not entries:
            return
        apply_updates = getattr(self.trainer, "apply_updates", None)
        if apply_updates is None:
            raise ValueError("--publish deltas needs a trainer with apply_updates() to start from a version with deltas")
        _, chain = chain_to(entries)
        for e in chain:
            apply_updates(log_.read_updates(e))
            lineage = e.doc.get("lineage") or {}
            if lineage.get("source") == "learner":
                self.trained_watermark = lineage.get("watermark", self.trained_watermark)
        self.deltas_since_full = len(chain)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, max_rounds: int | None = None, duration: float | None = None) -> None:
        self.start()
        rounds = 0
        deadline = None if duration is None else time.monotonic() + duration
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                result = self.step()
            except Exception as exc:  # a bad batch or a store hiccup must not end the learner
                log.exception("learner round failed")
                result = RoundResult("failed", parent=self.parent, reason=f"{type(exc).__name__}: {exc}")
                self._record(result)
                self._stop.wait(1.0)
            if result.outcome != "waiting":
                rounds += 1
                if max_rounds is not None and rounds >= max_rounds:
                    break
            else:
                self._stop.wait(self.opts.poll_seconds)

    def stop(self) -> None:
        self._stop.set()

    def step(self) -> RoundResult:
        """Read what is new; run one round if a trigger fired."""
        self._follow_repository()
        new = self.store.examples_after(self.model, self.watermark, self.opts.read_limit)
        for ex in new:
            if self._held_out(ex):
                self.holdout.append(ex)
            else:
                self.pending.append(ex)
            self.watermark = ex.watermark
        if (new and time.monotonic() - self._saved >= 1.0) or time.monotonic() - self._saved >= _HEARTBEAT_SECONDS:
            self._save_state()  # also a heartbeat: the status says whether the learner is alive
        due_count = len(self.pending) >= self.opts.every_examples
        due_time = (self.opts.every_seconds > 0 and self.pending
                    and time.monotonic() - self._last_round >= self.opts.every_seconds)
        if not (due_count or due_time):
            return RoundResult("waiting")
        if self.parent is not None and len(self.holdout) < self.opts.min_holdout:
            return RoundResult("waiting", reason=f"{len(self.holdout)} held-out examples, gate needs {self.opts.min_holdout}")
        return self._round()

    def _follow_repository(self) -> None:
        """Someone else published a newer version (an operator, a batch pipeline): train on top of it."""
        try:
            newest = self._newest_version(above=self.parent)
        except StorageUnavailable as exc:
            log.warning("learner for model %s: repository unreadable (%s); keeping version %s", self.model, exc,
                        self.parent)
            return
        if newest is not None:
            log.info("learner for model %s: version %d appeared in the repository; training on top of it",
                     self.model, newest)
            self._adopt(newest)

    def _held_out(self, ex: Example) -> bool:
        every = self.opts.holdout_every
        return every > 0 and zlib.crc32(ex.watermark.encode()) % every == 0

    def _round(self) -> RoundResult:
        t0 = time.perf_counter()
        examples, self.pending = self.pending, []
        self._last_round = time.monotonic()
        holdout = Batch.of(list(self.holdout))
        train = Batch.of(examples)
        parent_metrics = self.trainer.evaluate(holdout) if self.parent is not None and len(holdout) else {}
        t_eval = time.perf_counter()
        for _ in range(max(1, self.opts.epochs)):
            self.trainer.update(train)
        t_train = time.perf_counter()
        cand_metrics = self.trainer.evaluate(holdout) if len(holdout) else {}
        result = RoundResult("published", parent=self.parent, candidate_metrics=cand_metrics,
                             parent_metrics=parent_metrics, examples=len(examples), watermark=examples[-1].watermark)
        verdict = self._gate(parent_metrics, cand_metrics)
        if verdict:
            result.outcome, result.reason = "refused", verdict
            if self.parent is not None:
                revert = getattr(self.trainer, "revert", None)
                if self.opts.publish == "deltas" and revert is not None:
                    revert()  # back to the served revision (the version's files lack its deltas)
                else:
                    self.trainer.load(self._version_dir(self.parent))  # back to the serving state
        elif self._delta_due():
            t_delta = time.perf_counter()
            revision = self._publish_delta(examples, result)
            result.seconds["delta"] = round(time.perf_counter() - t_delta, 4)
            result.version, result.revision = self.parent, revision
            result.outcome = "published_delta" if revision is not None else "unchanged"
            self.trained_watermark = result.watermark
        else:
            result.version, export_s = self._publish(examples, result)
            result.seconds["export"] = export_s
            self.parent = result.version
            self.trained_watermark = result.watermark
            self.deltas_since_full = 0
            self._last_full = time.monotonic()
            self._retire_old_versions()
        result.seconds.update(evaluate=round(t_eval - t0, 4), train=round(t_train - t_eval, 4),
                              total=round(time.perf_counter() - t0, 4))
        self.examples_total += len(examples)
        self._record(result)
        return result

    def _gate(self, parent: dict, cand: dict) -> str:
        """'' when the candidate may be published, else why not."""
        if self.parent is None:
            return ""  # the first version: no baseline
        if self.metric not in cand or self.metric not in parent:
            return f"the trainer's evaluate() did not return the gate metric {self.metric!r}"
        c, p = cand[self.metric], parent[self.metric]
        if c != c:  # NaN (e.g. AUC on a holdout with one class only)
            return f"{self.metric} of the candidate is undefined on this holdout"
        worse = (p - c) if self.trainer.higher_is_better else (c - p)
        if worse > self.opts.max_metric_drop:
            return (f"{self.metric} {c:.4f} vs serving {p:.4f}: worse by {worse:.4f} > max_metric_drop "
                    f"{self.opts.max_metric_drop:g}")
        return ""

    def _delta_due(self) -> bool:
        """With --publish deltas: a delta now, unless a full version is due (count or time)."""
        if self.opts.publish != "deltas" or self.parent is None or not hasattr(self.trainer, "delta"):
            return False
        if self.opts.full_every and self.deltas_since_full >= self.opts.full_every:
            return False
        if self.opts.full_every_seconds and time.monotonic() - self._last_full >= self.opts.full_every_seconds:
            return False
        return True

    def _lineage(self, examples: list[Example], result: RoundResult) -> dict:
        return {
            "source": "learner", "model": self.model, "trainer": self.opts.trainer_spec,
            "parent": self.parent, "watermark": result.watermark,
            "previous_watermark": self.trained_watermark, "examples_used": len(examples),
            "oldest_example_time": min(e.time for e in examples),
            "newest_example_time": max(e.time for e in examples),
            "holdout_examples": len(self.holdout),
            "metrics": {"gate_metric": self.metric, "max_metric_drop": self.opts.max_metric_drop,
                        "candidate": result.candidate_metrics, "parent": result.parent_metrics},
            "trained_unix": time.time(),
        }

    def _publish_delta(self, examples: list[Example], result: RoundResult) -> int | None:
        """Write what changed as one entry of the serving version's delta log (the same log the
        servers write through the API: data, then a commit only one writer can create). Returns
        the new revision, or None when nothing changed."""
        raw = self.trainer.delta()
        if not raw:
            return None
        updates = [_Update(u["name"], np.asarray(u["values"]), None if u.get("rows") is None else np.asarray(u["rows"]))
                   for u in raw]
        payload = encode_updates(updates)
        log_ = DeltaLog(self.storage, self.storage.join(self.base_path, str(self.parent)))
        lineage = self._lineage(examples, result)
        for _ in range(20):
            entries = [log_.entry(s) for s in log_.commits()]
            served, _ = chain_to(entries) if entries else (0, [])
            seq = entries[-1].seq + 1 if entries else 1
            revision = max((e.revision for e in entries), default=0) + 1
            entry = log_.append(seq, "delta", revision, served, payload, "learner", tuple(u.name for u in updates),
                                sum(0 if u.rows is None else len(u.rows) for u in updates),
                                sum(u.values.nbytes for u in updates), extra={"lineage": lineage})
            if entry is not None:
                commit = getattr(self.trainer, "commit_delta", None)
                if commit is not None:
                    commit()
                self.deltas_since_full += 1
                return revision
        raise PublishError("could not append to the delta log: other writers kept taking the next entry")

    def _publish(self, examples: list[Example], result: RoundResult) -> tuple[int, float]:
        tmp = tempfile.mkdtemp(prefix=f"hotserve-learn-{self.model}-")
        try:
            t0 = time.perf_counter()
            self.trainer.export(tmp)
            export_s = time.perf_counter() - t0
            lineage = self._lineage(examples, result)
            for _ in range(5):
                try:
                    version, _ = publish(tmp, self.base_path, storage=self.storage, lineage=lineage)
                    return version, export_s
                except PublishError as exc:
                    if "already exists" not in str(exc) and "appeared" not in str(exc):
                        raise
                    # someone published the same number at the same moment: take the next one
            raise PublishError("could not find a free version number after 5 tries")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _retire_old_versions(self) -> None:
        """Keep the newest --keep_versions learner-made versions: a learner publishing every
        second would otherwise fill the repository. Operator-published versions stay."""
        keep = self.opts.keep_versions
        if keep <= 0:
            return
        try:
            versions = list_version_numbers(self.storage, self.base_path)
            for v in versions[:-keep]:
                path = self.storage.join(self.base_path, str(v))
                if v == self.parent:
                    continue
                try:
                    lineage = manifest.read(path, self.storage).get("lineage") or {}
                except Exception:
                    continue
                if lineage.get("source") == "learner" and lineage.get("model", self.model) == self.model:
                    self.storage.remove_tree(path)
        except (OSError, StorageUnavailable) as exc:
            log.warning("learner for model %s: could not retire old versions: %s", self.model, exc)

    # -- records -----------------------------------------------------------------------------
    def _record(self, r: RoundResult) -> None:
        doc = {"outcome": r.outcome, "version": r.version, "revision": r.revision, "parent": r.parent, "metric": self.metric,
               "candidate_metrics": _finite(r.candidate_metrics), "parent_metrics": _finite(r.parent_metrics),
               "max_metric_drop": self.opts.max_metric_drop, "examples": r.examples, "watermark": r.watermark,
               "reason": r.reason, "seconds": r.seconds, "time": time.time()}
        self.last_candidate = doc
        event = events.LearnerCandidate(self.model, version=r.version, parent=r.parent, outcome=r.outcome,
                                        metric=self.metric, candidate_metrics=doc["candidate_metrics"],
                                        parent_metrics=doc["parent_metrics"], max_metric_drop=self.opts.max_metric_drop,
                                        examples=r.examples, watermark=str(r.watermark or ""), reason=r.reason)
        self.bus.publish(event)  # a log line (and the learner process's own metric)
        try:
            self.store.append_learner_record(self.model, doc)  # the server republishes it: event + metric
            self._save_state()
        except Exception:
            log.exception("learner: could not record the round in the feedback store")

    def _save_state(self) -> None:
        self._saved = time.monotonic()
        self.store.set_learner_state(self.model, {
            "watermark": self.watermark, "trained_watermark": self.trained_watermark,
            "parent_version": self.parent, "pending_examples": len(self.pending),
            "holdout_examples": len(self.holdout), "examples_trained_total": self.examples_total,
            "last_candidate": self.last_candidate, "updated_unix": time.time(),
            "poll_seconds": self.opts.poll_seconds, "pid": os.getpid(),
        })


@dataclass(frozen=True)
class _Update:
    """One tensor's change, as the delta log encodes it (name, values, rows or None)."""

    name: str
    values: np.ndarray
    rows: np.ndarray | None = None


def _finite(d: dict) -> dict:
    return {k: (v if v == v else None) for k, v in d.items()}


def subscribe_metrics_and_logs(bus: events.EventBus = events.BUS) -> None:
    metrics.subscribe(bus)
    events.subscribe_logging(bus, logging.getLogger("hotserve.learner"))
