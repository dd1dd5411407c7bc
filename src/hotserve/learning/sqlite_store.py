"""The embedded feedback store: one SQLite database in WAL mode under --learning_dir.

WAL lets the server's request threads, its prediction-log writer and a learner process read
and write at once (one writer at a time, readers never blocked). Feedback commits run with
synchronous=FULL: the WAL is fsynced before add_feedback returns, so a 200 survives kill -9 and
power loss. The prediction log's batches use synchronous=NORMAL (one fsync per checkpoint):
a logged prediction is not a promise to anyone, and batching them is what keeps logging cheap.
A logged prediction's tensors go to append-only segment files beside the database
(`predictions/`, segments.py); the database holds the index the feedback join reads. Each
thread gets its own connection.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Sequence

import numpy as np

from hotserve.learning import id_runs, tensors
from hotserve.learning.segments import SegmentFiles
from hotserve.learning.sqlite_index import IndexWriter, bump, connect, set_durable
from hotserve.learning.store import Example, FeedbackResult, Label, NewExample, PredictionBatch, Retention, StoreStats

_SCHEMA = """
DROP TABLE IF EXISTS predictions;                -- an earlier layout: tensors as blobs (segments.py says why not)
CREATE TABLE IF NOT EXISTS prediction_chunks (  -- one per (model, version, signature) group of a writer batch
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL, t_last REAL NOT NULL,
    segment TEXT NOT NULL, offset INTEGER NOT NULL, inputs_len INTEGER NOT NULL, outputs_len INTEGER NOT NULL,
    first_id INTEGER NOT NULL, last_id INTEGER NOT NULL,  -- its rows of prediction_ids: retention deletes the range
    n INTEGER NOT NULL DEFAULT 0,                        -- requests in it
    first_run INTEGER NOT NULL DEFAULT 1, last_run INTEGER NOT NULL DEFAULT 0  -- its rows of prediction_runs
);
CREATE INDEX IF NOT EXISTS prediction_chunks_by_time ON prediction_chunks (t_last);
CREATE TABLE IF NOT EXISTS prediction_runs (    -- the join for ids that pack (id_runs.py): many ids a row
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, prefix INTEGER NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, chunk INTEGER NOT NULL, counters BLOB NOT NULL, rows BLOB NOT NULL, times BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS prediction_runs_by_counter ON prediction_runs (model, prefix, first, last);
CREATE TABLE IF NOT EXISTS prediction_ids (     -- the join for other ids: request id -> row k of a chunk
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, request_id TEXT NOT NULL, chunk INTEGER NOT NULL,
    k INTEGER NOT NULL, time REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS prediction_ids_by_request ON prediction_ids (model, request_id);
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
# Columns a database made before prediction_runs lacks (its chunks get no runs, and n from their ids).
_CHUNK_COLUMNS_SINCE_RUNS = {"n": "INTEGER NOT NULL DEFAULT 0", "first_run": "INTEGER NOT NULL DEFAULT 1",
                             "last_run": "INTEGER NOT NULL DEFAULT 0"}


def _add_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> bool:
    """Add the columns the table lacks; whether this call added any."""
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    added = False
    for name, decl in columns.items():
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
                added = True
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise
    return added


class SqliteStore:
    def __init__(self, path: str, retention: Retention | None = None) -> None:
        self.path = os.path.abspath(path)
        self.url = f"sqlite://{self.path}"
        self.retention = retention or Retention()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # A writer rotates its segment well inside the label window, so pruning by the window
        # never removes a file someone still appends to (segments.py).
        self.segments = SegmentFiles(os.path.join(os.path.dirname(self.path), "predictions"),
                                     max_age=min(300.0, self.retention.label_window_seconds / 2))
        self.index = IndexWriter(self.path)
        conn = self._conn()
        conn.executescript(_SCHEMA)
        if _add_columns(conn, "prediction_chunks", _CHUNK_COLUMNS_SINCE_RUNS):
            # An older chunk's requests are its prediction_ids rows, one each.
            conn.execute("UPDATE prediction_chunks SET n = last_id - first_id + 1 WHERE n = 0")

    def _conn(self, durable: bool = True) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, durable)
            self._local.durable = durable
            with self._all_lock:
                self._all.append(conn)
        elif self._local.durable is not durable:
            set_durable(conn, durable)
            self._local.durable = durable
        return conn

    # -- writes ------------------------------------------------------------------------------
    def log_predictions(self, batches: Sequence[PredictionBatch]) -> None:
        chunks = []
        for b in batches:
            if not len(b):
                continue
            (parts_in, n_in), (parts_out, n_out) = tensors.encode_rows_parts(b.inputs), tensors.encode_rows_parts(b.outputs)
            segment, offset = self.segments.append(parts_in + parts_out, n_in + n_out)
            chunks.append([b.model, b.version, segment, offset, n_in, n_out, b.request_ids, b.times])
        if chunks:
            self.index.write(chunks)  # the bytes are in the segments before an index row points at them

    def _logged_inputs(self, conn: sqlite3.Connection, model: str, request_id: str, oldest: float,
                       cache: dict) -> tuple[int, float, dict[str, np.ndarray]] | None:
        """(version, predicted_at, the request's inputs) of a logged prediction still inside the
        label window, or None. `cache` keeps the headers of the groups read for the rest of one feedback call."""
        found = self._logged_row(conn, model, request_id)
        if found is None or found[1] < oldest:
            return None
        k, predicted_at, chunk = found
        version, segment, offset, length = conn.execute(
            "SELECT version, segment, offset, inputs_len FROM prediction_chunks WHERE id = ?", (chunk,)).fetchone()
        if chunk not in cache:
            cache[chunk] = self._chunk_header(segment, offset, length)
        head = cache[chunk]
        if head is None:
            return None
        # Only the request's own bytes: segments bypass the page cache, so a whole group (3 MB
        # for 1,000 requests of 784 floats) read for one label took 9.1 ms from disk; a label
        # that reads its rows, 0.5 ms all told.
        inputs: dict[str, np.ndarray] = {}
        for name, strings, start, size, dtype, shape in tensors.row_ranges(head, k):
            if strings is not None:
                inputs[name] = strings
                continue
            data = self.segments.read(segment, offset + start, size)
            if data is None:
                return None
            inputs[name] = np.frombuffer(data, dtype).reshape(shape)
        return version, predicted_at, inputs

    def _chunk_header(self, segment: str, offset: int, length: int) -> bytes | None:
        """A logged group's header (names, dtypes, shapes, where each tensor starts), or None
        when its segment is gone."""
        first = self.segments.read(segment, offset, min(length, 4096))
        if first is None:
            return None
        size = tensors.header_length(first)
        return first[:size] if size <= len(first) else self.segments.read(segment, offset, size)

    @staticmethod
    def _logged_row(conn: sqlite3.Connection, model: str, request_id: str) -> tuple[int, float, int] | None:
        """(row k in its chunk, time, chunk) of a logged request id, the first logged if several."""
        packed = id_runs.packed(request_id)
        if packed is not None:
            prefix, counter = packed
            lo, hi = id_runs.lookup_bounds(counter)
            for chunk, counters, rows, times in conn.execute(
                    "SELECT chunk, counters, rows, times FROM prediction_runs WHERE model = ? AND prefix = ?"
                    " AND first BETWEEN ? AND ? AND last >= ? ORDER BY id", (model, prefix, lo, hi, counter)):
                hit = id_runs.find(counter, counters, rows, times)
                if hit is not None:
                    return hit[0], hit[1], chunk
        # Ids that do not pack, and any logged before runs existed.
        return conn.execute("SELECT k, time, chunk FROM prediction_ids WHERE model = ? AND request_id = ?",
                            (model, request_id)).fetchone()

    def add_feedback(self, model: str, labels: Sequence[Label], examples: Sequence[NewExample],
                     now: float) -> FeedbackResult:
        conn = self._conn(durable=True)
        unknown: list[str] = []
        accepted = 0
        joined = 0
        last: int | None = None
        oldest = now - self.retention.label_window_seconds
        chunks: dict = {}
        conn.execute("BEGIN IMMEDIATE")
        try:
            for lab in labels:
                found = self._logged_inputs(conn, model, lab.request_id, oldest, chunks)
                if found is None:
                    unknown.append(lab.request_id)
                    continue
                version, predicted_at, inputs = found
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
            bump(conn, model, "labels_joined_total", joined)
            bump(conn, model, "examples_added_total", joined + len(examples))
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
            cutoff = now - r.label_window_seconds
            stale = conn.execute("SELECT first_id, last_id, first_run, last_run, n FROM prediction_chunks WHERE t_last < ?",
                                 (cutoff,)).fetchall()
            for first, last_id, first_run, last_run, n in stale:
                removed["predictions"] += n
                conn.execute("DELETE FROM prediction_ids WHERE id BETWEEN ? AND ?", (first, last_id))
                conn.execute("DELETE FROM prediction_runs WHERE id BETWEEN ? AND ?", (first_run, last_run))
            conn.execute("DELETE FROM prediction_chunks WHERE t_last < ?", (cutoff,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        # After the commit: no index row points into a file removed here (a segment's mtime is
        # after every record in it, and every chunk older than the cutoff is gone).
        self.segments.remove_older_than(cutoff)
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
        oldest = now - self.retention.label_window_seconds
        counters = dict(conn.execute("SELECT name, value FROM counters WHERE model = ?", (model,)).fetchall())
        stored, last = conn.execute("SELECT COUNT(*), MAX(seq) FROM examples WHERE model = ?", (model,)).fetchone()
        # Logged in the window less those labelled: per chunk and per example, not per id (a
        # chunk's requests count from its last one's time).
        logged = conn.execute("SELECT COALESCE(SUM(n), 0) FROM prediction_chunks WHERE model = ? AND t_last >= ?",
                              (model, oldest)).fetchone()[0]
        labelled = conn.execute("SELECT COUNT(DISTINCT request_id) FROM examples WHERE model = ? AND request_id IS NOT NULL"
                                " AND predicted_at >= ?", (model, oldest)).fetchone()[0]
        pending = max(0, logged - labelled)
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
        self.index.close()
        self.segments.close()


def _example(r) -> Example:
    seq, t, inputs, label, weight, request_id, version, predicted_at = r
    return Example(str(seq), t, tensors.decode(inputs), tensors.decode(label), weight, request_id, version, predicted_at)
