"""The SQLite store's prediction index, written by a child process of each process that logs.

Why a process: every sqlite3 call releases the GIL around each statement step and must win it
back from the serving thread (which holds it for whole requests), so an index writer thread in
the serving process paid ~25 us a record in GIL hand-offs for ~2 us of SQLite work
(bench/learning.py). The child has its own interpreter: the serving process only sends it each
batch's index rows (ids and times, no tensors: those are already in the segment files) over a
pipe and waits for the commit.

Frames both ways are a 4-byte little-endian length and a JSON body. Request: a list of chunks
`[model, version, segment, offset, inputs_len, outputs_len, [request ids], [times]]`; answer:
`{"ok": true}` or `{"error": "..."}`. The child ends at EOF on its stdin (its parent closed the
pipe or died). It imports the standard library and orjson only (id_runs.py too): ~50 ms to
start and 15 MB resident, where numpy would make it 140 ms and 28 MB, in each worker.
"""

from __future__ import annotations

import functools
import sqlite3
import struct
import subprocess
import sys
import threading

import orjson

from hotserve.learning import id_runs

_ROWS_PER_INSERT = 500  # one INSERT of many rows: SQLite's limit on bound parameters is 32766


@functools.lru_cache(maxsize=None)
def _insert_ids(n: int) -> str:
    return ("INSERT OR IGNORE INTO prediction_ids (id, model, request_id, chunk, k, time) VALUES "
            + ",".join(["(?, ?, ?, ?, ?, ?)"] * n))


def connect(path: str, durable: bool) -> sqlite3.Connection:
    """A connection to the feedback database in WAL mode; durable: synchronous=FULL (a commit
    is on disk when it returns), else NORMAL (on disk at the next checkpoint). isolation_level
    None: callers issue BEGIN/COMMIT themselves, so a call is one transaction."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    set_durable(conn, durable)
    return conn


def set_durable(conn: sqlite3.Connection, durable: bool) -> None:
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")


def bump(conn: sqlite3.Connection, model: str, name: str, n: int) -> None:
    if n:
        conn.execute("INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (model, name) DO UPDATE SET value = value + ?",
                     (model, name, n, n))


def write_chunks(conn: sqlite3.Connection, chunks: list) -> None:
    """One transaction: each chunk's row, its ids that pack as runs (one row a run, id_runs.py)
    and its other ids one row each."""
    per_model: dict[str, int] = {}
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Row ids are assigned here (the transaction holds the write lock) so each chunk knows
        # its ranges of prediction_ids and prediction_runs, which is how retention deletes them
        # without another index.
        next_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM prediction_ids").fetchone()[0] + 1
        next_run = conn.execute("SELECT COALESCE(MAX(id), 0) FROM prediction_runs").fetchone()[0] + 1
        for model, version, segment, offset, n_in, n_out, ids, times in chunks:
            packs, one_each = id_runs.split(ids)
            runs = list(id_runs.runs(ids, times, packs))
            first, first_run = next_id, next_run
            next_id += len(one_each)
            next_run += len(runs)
            chunk = conn.execute(
                "INSERT INTO prediction_chunks (model, version, t_last, segment, offset, inputs_len, outputs_len,"
                " first_id, last_id, n, first_run, last_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model, version, max(times), segment, offset, n_in, n_out, first, next_id - 1, len(ids),
                 first_run, next_run - 1)).lastrowid
            conn.executemany("INSERT INTO prediction_runs (id, model, prefix, first, last, chunk, counters, rows, times)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [(i, model, *run[:3], chunk, *run[3:]) for i, run in enumerate(runs, first_run)])
            for i in range(0, len(one_each), _ROWS_PER_INSERT):
                part = one_each[i:i + _ROWS_PER_INSERT]
                conn.execute(_insert_ids(len(part)), [v for j, k in enumerate(part, first + i)
                                                      for v in (j, model, ids[k], chunk, k, times[k])])
            per_model[model] = per_model.get(model, 0) + len(ids)
        for model, n in per_model.items():
            bump(conn, model, "predictions_logged_total", n)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _read_frame(stream) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack("<I", head)
    body = stream.read(n)
    return body if len(body) == n else None


def _write_frame(stream, body: bytes) -> None:
    stream.write(struct.pack("<I", len(body)) + body)
    stream.flush()


def main(path: str) -> int:
    conn = connect(path, durable=False)  # a logged prediction is not a promise: no fsync per batch
    while (body := _read_frame(sys.stdin.buffer)) is not None:
        try:
            write_chunks(conn, orjson.loads(body))
            answer = {"ok": True}
        except Exception as exc:  # reported to the parent, which counts the records as failed
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        _write_frame(sys.stdout.buffer, orjson.dumps(answer))
    conn.close()
    return 0


class IndexWriter:
    """The parent's end: started on first use, started again after it died."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def write(self, chunks: list) -> None:
        body = orjson.dumps(chunks)
        with self._lock:
            proc = self._running()
            try:
                _write_frame(proc.stdin, body)
                answer = _read_frame(proc.stdout)
            except (BrokenPipeError, OSError):
                answer = None
            if answer is None:
                self._reap()
                raise RuntimeError(f"the prediction index writer for {self.path} exited; it is started again "
                                   "with the next batch")
        doc = orjson.loads(answer)
        if "error" in doc:
            raise RuntimeError(f"prediction index: {doc['error']}")

    def _running(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-m", "hotserve.learning.sqlite_index", self.path],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                          start_new_session=True)  # a terminal's Ctrl-C reaches the parent; EOF ends it
        return self._proc

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        with self._lock:
            self._reap()  # EOF on its stdin: it finishes the batch in hand and exits


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
