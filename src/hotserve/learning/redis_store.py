"""The fleet feedback store: Redis Streams, so several servers feed one learner.

Per model (keys carry a `{model}` hash tag, so one model's keys share a cluster slot):
- `hotserve:{m}:pred:<request id>`: a logged prediction (hash), expiring after the label window;
  `hotserve:{m}:preds` (sorted set id -> time) counts the ones still waiting for a label.
- `hotserve:{m}:examples`: the example stream; an entry's stream id is its watermark, and the
  learner reads with XRANGE from "(watermark". Retention is XTRIM by MINID (age: stream ids
  start with the milliseconds of the append) and MAXLEN (count).
- `hotserve:{m}:lab:<id>:<row>`: marks a labelled row, so a retried label is stored once.
- `hotserve:{m}:counters`, `hotserve:{m}:learner` (state), `hotserve:{m}:learner_log` (stream).

A feedback call is one MULTI/EXEC. Durable on return only when the Redis server runs with
`appendonly yes` and `appendfsync always` (Redis fsyncs the AOF before it answers); the store
checks this at start and logs a warning otherwise.
"""

from __future__ import annotations

import json
import logging
from typing import Sequence

from hotserve.learning import tensors
from hotserve.learning.store import Example, FeedbackResult, Label, NewExample, PredictionBatch, Retention, StoreStats

log = logging.getLogger("hotserve.learning")

_LEARNER_LOG_KEEP = 1000


class RedisStore:
    def __init__(self, url: str, retention: Retention | None = None) -> None:
        try:
            import redis
        except ImportError:
            raise RuntimeError("the Redis feedback store needs the redis client: pip install 'hotserve[learning]'") from None
        self.url = url
        self.retention = retention or Retention()
        self.r = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10)
        self.r.ping()
        self._check_durability()

    def _check_durability(self) -> None:
        import redis

        try:
            cfg = {**self.r.config_get("appendonly"), **self.r.config_get("appendfsync")}
        except redis.ResponseError:
            return  # CONFIG disabled (managed Redis): nothing to check
        if cfg.get("appendonly") != "yes" or cfg.get("appendfsync") != "always":
            log.warning("feedback store %s: Redis runs with appendonly=%s appendfsync=%s; a feedback 200 is durable "
                        "across a Redis crash only with appendonly yes and appendfsync always",
                        self.url, cfg.get("appendonly"), cfg.get("appendfsync"))

    @staticmethod
    def _k(model: str, name: str) -> str:
        return f"hotserve:{{{model}}}:{name}"

    # -- writes ------------------------------------------------------------------------------
    def log_predictions(self, batches: Sequence[PredictionBatch]) -> None:
        if not batches:
            return
        ttl = max(1, int(self.retention.label_window_seconds) + 1)
        p = self.r.pipeline(transaction=False)
        per_model: dict[str, int] = {}
        for b in batches:
            for k, (rid, t) in enumerate(zip(b.request_ids, b.times)):
                inputs, outputs = b.request(k)
                key = self._k(b.model, f"pred:{rid}")
                p.hset(key, mapping={"v": b.version, "t": repr(t), "i": tensors.encode(inputs),
                                     "o": tensors.encode(outputs)})
                p.expire(key, ttl)
                p.zadd(self._k(b.model, "preds"), {rid: t}, nx=True)
            per_model[b.model] = per_model.get(b.model, 0) + len(b)
        for model, n in per_model.items():
            p.hincrby(self._k(model, "counters"), "predictions_logged_total", n)
        p.execute()

    def add_feedback(self, model: str, labels: Sequence[Label], examples: Sequence[NewExample],
                     now: float) -> FeedbackResult:
        oldest = now - self.retention.label_window_seconds
        ttl = max(1, int(self.retention.label_window_seconds) + 1)
        read = self.r.pipeline(transaction=False)
        for lab in labels:
            read.hmget(self._k(model, f"pred:{lab.request_id}"), ["v", "t", "i"])
            read.exists(self._k(model, f"lab:{lab.request_id}:{lab.row}"))
        found = read.execute() if labels else []
        unknown: list[str] = []
        accepted = 0
        joined = 0
        tx = self.r.pipeline(transaction=True)
        stream = self._k(model, "examples")
        n_xadd = 0
        for i, lab in enumerate(labels):
            (version, t, blob), done = found[2 * i], found[2 * i + 1]
            if version is None or float(t) < oldest:
                unknown.append(lab.request_id)
                continue
            inputs = tensors.decode(blob)
            if lab.row >= min((len(v) for v in inputs.values()), default=0):
                unknown.append(lab.request_id)
                continue
            accepted += 1
            if done:
                continue  # a retry of a label already stored
            tx.xadd(stream, {"t": repr(now), "i": tensors.encode(tensors.row(inputs, lab.row)),
                             "l": tensors.encode(lab.label), "w": repr(lab.weight), "rid": lab.request_id,
                             "row": lab.row, "v": int(version), "pt": t})
            tx.set(self._k(model, f"lab:{lab.request_id}:{lab.row}"), 1, ex=ttl)
            tx.zrem(self._k(model, "preds"), lab.request_id)
            joined += 1
            n_xadd += 1
        for ex in examples:
            tx.xadd(stream, {"t": repr(now), "i": tensors.encode(ex.inputs), "l": tensors.encode(ex.label),
                             "w": repr(ex.weight)})
            accepted += 1
            n_xadd += 1
        if joined:
            tx.hincrby(self._k(model, "counters"), "labels_joined_total", joined)
        if n_xadd:
            tx.hincrby(self._k(model, "counters"), "examples_added_total", n_xadd)
        results = tx.execute() if n_xadd else []
        ids = [r for r in results if isinstance(r, bytes) and b"-" in r]
        last = ids[-1].decode() if ids else None
        return FeedbackResult(accepted, unknown, last)

    def set_learner_state(self, model: str, doc: dict) -> None:
        self.r.set(self._k(model, "learner"), json.dumps(doc))

    def append_learner_record(self, model: str, doc: dict) -> str:
        rid = self.r.xadd(self._k(model, "learner_log"), {"doc": json.dumps(doc)}, maxlen=_LEARNER_LOG_KEEP,
                          approximate=True)
        return rid.decode()

    def prune(self, now: float) -> dict[str, int]:
        r = self.retention
        removed = {"examples": 0, "predictions": 0}
        for key in self.r.scan_iter(match="hotserve:{*}:examples", count=1000):
            model = key.decode()[len("hotserve:{"):-len("}:examples")]
            if r.max_age_seconds is not None:
                removed["examples"] += self.r.xtrim(key, minid=int((now - r.max_age_seconds) * 1000))
            if r.max_count is not None:
                removed["examples"] += self.r.xtrim(key, maxlen=r.max_count, approximate=False)
            removed["predictions"] += self.r.zremrangebyscore(self._k(model, "preds"), "-inf",
                                                              now - r.label_window_seconds)
        return removed

    # -- reads -------------------------------------------------------------------------------
    def examples_after(self, model: str, watermark: str | None, limit: int) -> list[Example]:
        start = f"({watermark}" if watermark else "-"
        return [_example(i, f) for i, f in self.r.xrange(self._k(model, "examples"), start, "+", count=limit)]

    def recent_examples(self, model: str, limit: int) -> list[Example]:
        rows = self.r.xrevrange(self._k(model, "examples"), "+", "-", count=limit)
        return [_example(i, f) for i, f in reversed(rows)]

    def stats(self, model: str, now: float) -> StoreStats:
        p = self.r.pipeline(transaction=False)
        p.hgetall(self._k(model, "counters"))
        p.xlen(self._k(model, "examples"))
        p.xrevrange(self._k(model, "examples"), "+", "-", count=1)
        p.zcount(self._k(model, "preds"), now - self.retention.label_window_seconds, "+inf")
        counters, stored, last, pending = p.execute()
        c = {k.decode(): int(v) for k, v in counters.items()}
        return StoreStats(stored, c.get("examples_added_total", 0), c.get("labels_joined_total", 0),
                          c.get("predictions_logged_total", 0), pending, last[0][0].decode() if last else None)

    def learner_state(self, model: str) -> dict | None:
        raw = self.r.get(self._k(model, "learner"))
        return json.loads(raw) if raw else None

    def learner_records(self, model: str, after: str | None, limit: int = 100) -> list[tuple[str, dict]]:
        start = f"({after}" if after else "-"
        rows = self.r.xrange(self._k(model, "learner_log"), start, "+", count=limit)
        return [(i.decode(), json.loads(f[b"doc"])) for i, f in rows]

    def close(self) -> None:
        self.r.close()


def _example(entry_id: bytes, f: dict) -> Example:
    rid = f.get(b"rid")
    return Example(
        entry_id.decode(), float(f[b"t"]), tensors.decode(f[b"i"]), tensors.decode(f[b"l"]), float(f[b"w"]),
        rid.decode() if rid is not None else None,
        int(f[b"v"]) if b"v" in f else None,
        float(f[b"pt"]) if b"pt" in f else None,
    )
