"""The embedded feedback store: one SQLite database in WAL mode under --learning_dir.

WAL lets the server's request threads, its prediction-log writer and a learner process read
and write at once (one writer at a time, readers never blocked). Feedback commits run with
synchronous=FULL: the WAL is fsynced before add_feedback returns, so a 200 survives kill -9 and
power loss. The prediction log's batches use synchronous=NORMAL (one fsync per checkpoint):
a logged prediction is not a promise to anyone, and batching them is what keeps logging cheap.
Each thread gets its own connection.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from typing import Sequence

from hotserve.learning import tensors
from hotserve.learning.store import Example, FeedbackResult, Label, NewExample, Prediction, Retention, StoreStats

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (      -- rows append in time order (rowid); blobs stay in place
    model TEXT NOT NULL, request_id TEXT NOT NULL, version INTEGER NOT NULL, time REAL NOT NULL,
    inputs BLOB NOT NULL, outputs BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS predictions_by_request ON predictions (model, request_id);  -- the join
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (time);
CREATE TABLE IF NOT EXISTS examples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,     -- the watermark: never reused, only grows
    model TEXT NOT NULL, time REAL NOT NULL,
    request_id TEXT, row INTEGER, version INTEGER, predicted_at REAL,
    inputs BLOB NOT NULL, label BLOB NOT NULL, weight REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS examples_after_watermark ON examples (model, seq);
CREATE UNIQUE INDEX IF NOT EXISTS examples_by_request ON examples (model, request_id, row)
    WHERE request_id IS NOT NULL;              -- one label per predicted row: retries are idempotent
CREATE INDEX IF NOT EXISTS examples_by_time ON examples (time);
CREATE TABLE IF NOT EXISTS counters (model TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (model, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS learner_state (model TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS learner_log (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL,
    time REAL NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS learner_log_by_model ON learner_log (model, id);
"""

_LEARNER_LOG_KEEP = 1000
# One INSERT of many rows: sqlite3 releases and retakes the GIL around every statement step, and
# executemany steps once per row; in the serving process that hand-off per row costs the request
# threads far more than the insert itself (bench/learning.py).
_ROWS_PER_INSERT = 500


@functools.lru_cache(maxsize=None)
def _insert_predictions(n: int) -> str:
    return ("INSERT OR IGNORE INTO predictions (model, request_id, version, time, inputs, outputs) VALUES "
            + ",".join(["(?, ?, ?, ?, ?, ?)"] * n))


class SqliteStore:
    def __init__(self, path: str, retention: Retention | None = None) -> None:
        self.path = os.path.abspath(path)
        self.url = f"sqlite://{self.path}"
        self.retention = retention or Retention()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        conn = self._conn()
        conn.executescript(_SCHEMA)

    def _conn(self, durable: bool = True) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a call is one transaction.
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            self._local.durable = None
            with self._all_lock:
                self._all.append(conn)
        if self._local.durable is not durable:
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._local.durable = durable
        return conn

    # -- writes ------------------------------------------------------------------------------
    def log_predictions(self, records: Sequence[Prediction]) -> None:
        if not records:
            return
        conn = self._conn(durable=False)
        rows = [(r.model, r.request_id, r.version, r.time, tensors.encode(r.inputs), tensors.encode(r.outputs))
                for r in records]
        per_model: dict[str, int] = {}
        for r in records:
            per_model[r.model] = per_model.get(r.model, 0) + 1
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[i:i + _ROWS_PER_INSERT]
                conn.execute(_insert_predictions(len(chunk)), [v for row in chunk for v in row])
            for model, n in per_model.items():
                _bump(conn, model, "predictions_logged_total", n)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def add_feedback(self, model: str, labels: Sequence[Label], examples: Sequence[NewExample],
                     now: float) -> FeedbackResult:
        conn = self._conn(durable=True)
        unknown: list[str] = []
        accepted = 0
        joined = 0
        last: int | None = None
        oldest = now - self.retention.label_window_seconds
        conn.execute("BEGIN IMMEDIATE")
        try:
            for lab in labels:
                row = conn.execute(
                    "SELECT version, time, inputs FROM predictions WHERE model = ? AND request_id = ?",
                    (model, lab.request_id)).fetchone()
                if row is None or row[1] < oldest:
                    unknown.append(lab.request_id)
                    continue
                version, predicted_at, blob = row
                inputs = tensors.decode(blob)
                batch = min((len(v) for v in inputs.values()), default=0)
                if lab.row >= batch:
                    unknown.append(lab.request_id)
                    continue
                cur = conn.execute(
                    "INSERT OR IGNORE INTO examples (model, time, request_id, row, version, predicted_at, inputs, label, weight)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (model, now, lab.request_id, lab.row, version, predicted_at,
                     tensors.encode(tensors.row(inputs, lab.row)), tensors.encode(lab.label), lab.weight))
                accepted += 1
                if cur.rowcount:
                    joined += 1
                    last = cur.lastrowid
            for ex in examples:
                cur = conn.execute(
                    "INSERT INTO examples (model, time, inputs, label, weight) VALUES (?, ?, ?, ?, ?)",
                    (model, now, tensors.encode(ex.inputs), tensors.encode(ex.label), ex.weight))
                accepted += 1
                last = cur.lastrowid
            _bump(conn, model, "labels_joined_total", joined)
            _bump(conn, model, "examples_added_total", joined + len(examples))
            conn.execute("COMMIT")  # synchronous=FULL: the WAL is on disk when this returns
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return FeedbackResult(accepted, unknown, None if last is None else str(last))

    def set_learner_state(self, model: str, doc: dict) -> None:
        self._conn().execute("INSERT OR REPLACE INTO learner_state VALUES (?, ?)", (model, json.dumps(doc)))

    def append_learner_record(self, model: str, doc: dict) -> str:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute("INSERT INTO learner_log (model, time, doc) VALUES (?, ?, ?)",
                               (model, time.time(), json.dumps(doc)))
            conn.execute("DELETE FROM learner_log WHERE model = ? AND id <= ?", (model, cur.lastrowid - _LEARNER_LOG_KEEP))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return str(cur.lastrowid)

    def prune(self, now: float) -> dict[str, int]:
        conn = self._conn(durable=False)
        removed = {"examples": 0, "predictions": 0}
        conn.execute("BEGIN IMMEDIATE")
        try:
            r = self.retention
            if r.max_age_seconds is not None:
                removed["examples"] += conn.execute("DELETE FROM examples WHERE time < ?",
                                                    (now - r.max_age_seconds,)).rowcount
            if r.max_count is not None:
                for (model,) in conn.execute("SELECT DISTINCT model FROM examples").fetchall():
                    cut = conn.execute("SELECT seq FROM examples WHERE model = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
                                       (model, r.max_count)).fetchone()
                    if cut is not None:
                        removed["examples"] += conn.execute("DELETE FROM examples WHERE model = ? AND seq <= ?",
                                                            (model, cut[0])).rowcount
            removed["predictions"] = conn.execute("DELETE FROM predictions WHERE time < ?",
                                                  (now - r.label_window_seconds,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return removed

    # -- reads -------------------------------------------------------------------------------
    def examples_after(self, model: str, watermark: str | None, limit: int) -> list[Example]:
        rows = self._conn().execute(
            "SELECT seq, time, inputs, label, weight, request_id, version, predicted_at FROM examples"
            " WHERE model = ? AND seq > ? ORDER BY seq LIMIT ?", (model, int(watermark or 0), limit)).fetchall()
        return [_example(r) for r in rows]

    def recent_examples(self, model: str, limit: int) -> list[Example]:
        rows = self._conn().execute(
            "SELECT seq, time, inputs, label, weight, request_id, version, predicted_at FROM examples"
            " WHERE model = ? ORDER BY seq DESC LIMIT ?", (model, limit)).fetchall()
        return [_example(r) for r in reversed(rows)]

    def stats(self, model: str, now: float) -> StoreStats:
        conn = self._conn()
        counters = dict(conn.execute("SELECT name, value FROM counters WHERE model = ?", (model,)).fetchall())
        stored, last = conn.execute("SELECT COUNT(*), MAX(seq) FROM examples WHERE model = ?", (model,)).fetchone()
        pending = conn.execute(
            "SELECT COUNT(*) FROM predictions p WHERE p.model = ? AND p.time >= ? AND NOT EXISTS"
            " (SELECT 1 FROM examples e WHERE e.model = p.model AND e.request_id = p.request_id)",
            (model, now - self.retention.label_window_seconds)).fetchone()[0]
        return StoreStats(stored, counters.get("examples_added_total", 0), counters.get("labels_joined_total", 0),
                          counters.get("predictions_logged_total", 0), pending, None if last is None else str(last))

    def learner_state(self, model: str) -> dict | None:
        row = self._conn().execute("SELECT doc FROM learner_state WHERE model = ?", (model,)).fetchone()
        return json.loads(row[0]) if row else None

    def learner_records(self, model: str, after: str | None, limit: int = 100) -> list[tuple[str, dict]]:
        rows = self._conn().execute("SELECT id, doc FROM learner_log WHERE model = ? AND id > ? ORDER BY id LIMIT ?",
                                    (model, int(after or 0), limit)).fetchall()
        return [(str(i), json.loads(d)) for i, d in rows]

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:
                pass  # made in another thread that still uses it; the process end closes it
        self._local = threading.local()


def _bump(conn: sqlite3.Connection, model: str, name: str, n: int) -> None:
    if n:
        conn.execute("INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (model, name) DO UPDATE SET value = value + ?",
                     (model, name, n, n))


def _example(r) -> Example:
    seq, t, inputs, label, weight, request_id, version, predicted_at = r
    return Example(str(seq), t, tensors.decode(inputs), tensors.decode(label), weight, request_id, version, predicted_at)
