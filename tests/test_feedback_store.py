"""One store test suite, run against both feedback stores: SQLite (WAL) and Redis Streams on
a real redis-server the fixture starts and stops."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hotserve.learning.stores import open_store
from hotserve.learning.store import (Label, NewExample, PredictionBatch, Retention, parse_retention,
                                     watermark_key)


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """make_store(retention) -> a fresh store of the parametrized kind (its own keys/file)."""
    made = []

    def make(retention: Retention | None = None):
        if request.param == "sqlite":
            store = open_store(str(tmp_path / "learning"), retention)
        else:
            import redis

            url = request.getfixturevalue("redis_url")
            redis.Redis.from_url(url).flushdb()
            store = open_store(url, retention)
        made.append(store)
        return store

    yield make
    for s in made:
        s.close()


def _pred(rid: str, x: float, t: float, model: str = "m", version: int = 1) -> PredictionBatch:
    """One logged request of batch 1 (a batch of one staged request)."""
    return PredictionBatch(model, version, [rid], [t], {"x": [np.array([[x, x + 1]], np.float32)]},
                           {"p": [np.array([[0.5]], np.float32)]})


def _label(rid: str, y: float, row: int = 0) -> Label:
    return Label(rid, {"p": np.array([y], np.float32)}, 1.0, row)


def test_join_labels_to_logged_predictions(make_store):
    store = make_store()
    now = time.time()
    store.log_predictions([_pred("a", 1.0, now), _pred("b", 2.0, now), _pred("c", 3.0, now, model="other")])
    res = store.add_feedback("m", [_label("a", 1.0), _label("zzz", 0.0), _label("c", 1.0)], [], now + 1)
    assert res.accepted == 1
    assert res.unknown_request_ids == ["zzz", "c"]  # c belongs to another model
    (ex,) = store.examples_after("m", None, 10)
    assert ex.request_id == "a" and ex.version == 1 and ex.watermark == res.watermark
    np.testing.assert_array_equal(ex.inputs["x"], np.array([1.0, 2.0], np.float32))  # one row
    np.testing.assert_array_equal(ex.label["p"], np.array([1.0], np.float32))
    st = store.stats("m", now + 1)
    assert (st.examples_stored, st.labels_joined_total, st.predictions_logged_total, st.predictions_pending) == (1, 1, 2, 1)
    assert st.last_watermark == res.watermark


def test_examples_after_watermark_in_order(make_store):
    store = make_store()
    marks = []
    for i in range(5):
        res = store.add_feedback("m", [], [NewExample({"x": np.array([i, i], np.float32)},
                                                      {"p": np.array([i % 2], np.float32)}, 0.5)], time.time())
        assert res.accepted == 1
        marks.append(res.watermark)
    assert sorted(marks, key=watermark_key) == marks
    after = store.examples_after("m", marks[1], 100)
    assert [e.watermark for e in after] == marks[2:]
    assert [float(e.inputs["x"][0]) for e in after] == [2.0, 3.0, 4.0]
    assert after[0].weight == 0.5 and after[0].request_id is None
    assert [e.watermark for e in store.examples_after("m", None, 2)] == marks[:2]
    assert [e.watermark for e in store.recent_examples("m", 2)] == marks[3:]
    assert store.examples_after("m", marks[-1], 10) == []


def test_retried_label_is_stored_once(make_store):
    store = make_store()
    now = time.time()
    store.log_predictions([_pred("a", 1.0, now)])
    assert store.add_feedback("m", [_label("a", 1.0)], [], now).accepted == 1
    again = store.add_feedback("m", [_label("a", 1.0)], [], now)
    assert again.accepted == 1 and again.unknown_request_ids == []
    assert len(store.examples_after("m", None, 10)) == 1


def test_label_too_late_is_unknown(make_store):
    store = make_store(Retention(label_window_seconds=60))
    now = time.time()
    store.log_predictions([_pred("old", 1.0, now - 120), _pred("new", 1.0, now - 30)])
    res = store.add_feedback("m", [_label("old", 1.0), _label("new", 0.0)], [], now)
    assert res.accepted == 1 and res.unknown_request_ids == ["old"]


def test_row_beyond_the_batch_is_unknown(make_store):
    store = make_store()
    now = time.time()
    store.log_predictions([_pred("a", 1.0, now)])
    assert store.add_feedback("m", [_label("a", 1.0, row=3)], [], now).unknown_request_ids == ["a"]


def test_retention_by_count_and_age(make_store):
    store = make_store(Retention(max_age_seconds=3600, max_count=3, label_window_seconds=60))
    now = time.time()
    for i in range(5):
        store.add_feedback("m", [], [NewExample({"x": np.array([i], np.float32)}, {"p": np.array([0], np.float32)})], now)
    store.log_predictions([_pred("stale", 1.0, now - 120)])
    store.prune(now)
    kept = store.examples_after("m", None, 100)
    assert [float(e.inputs["x"][0]) for e in kept] == [2.0, 3.0, 4.0]
    assert store.stats("m", now).predictions_pending == 0
    store.prune(now + 7200)  # everything is now older than the age limit
    assert store.examples_after("m", None, 100) == []


def test_learner_state_and_records(make_store):
    store = make_store()
    assert store.learner_state("m") is None
    store.set_learner_state("m", {"watermark": "7", "parent": 3})
    assert store.learner_state("m") == {"watermark": "7", "parent": 3}
    a = store.append_learner_record("m", {"outcome": "published", "version": 4})
    b = store.append_learner_record("m", {"outcome": "refused"})
    assert [d["outcome"] for _, d in store.learner_records("m", None)] == ["published", "refused"]
    assert store.learner_records("m", a) == [(b, {"outcome": "refused"})]


def test_string_inputs_round_trip(make_store):
    store = make_store()
    ex = NewExample({"q": np.array([b"hello", b"w\xc3\xb6rld"], dtype=object)}, {"p": np.array([1], np.int64)})
    store.add_feedback("m", [], [ex], time.time())
    (got,) = store.examples_after("m", None, 1)
    assert list(got.inputs["q"]) == [b"hello", "wörld".encode()]
    assert got.label["p"].dtype == np.int64


def test_parse_retention():
    r = parse_retention("7d,1000")
    assert (r.max_age_seconds, r.max_count) == (7 * 86400, 1000)
    assert parse_retention("none,50").max_age_seconds is None
    assert parse_retention("12h").max_count == Retention.max_count
    with pytest.raises(ValueError, match="label window"):
        parse_retention("30m", label_window="1h")
    with pytest.raises(ValueError, match="duration"):
        parse_retention("7 days")


def test_a_batch_of_requests_joins_row_by_row(make_store):
    """Requests logged together (one group: a stacked tensor per name) join one by one, each
    to its own rows."""
    store = make_store()
    now = time.time()
    xs = [np.arange(4, dtype=np.float32).reshape(2, 2) + 10 * k for k in range(3)]  # 3 requests, 2 rows each
    store.log_predictions([PredictionBatch("m", 2, ["r0", "r1", "r2"], [now] * 3, {"x": xs},
                                           {"p": [np.full((2, 1), k, np.float32) for k in range(3)]})])
    res = store.add_feedback("m", [_label("r2", 1.0, row=1), _label("r0", 0.0, row=0)], [], now)
    assert res.accepted == 2 and res.unknown_request_ids == []
    got = {e.request_id: e for e in store.examples_after("m", None, 10)}
    np.testing.assert_array_equal(got["r2"].inputs["x"], xs[2][1])
    np.testing.assert_array_equal(got["r0"].inputs["x"], xs[0][0])
    assert got["r2"].version == 2
    # Several tensors, strings among them: each request's own rows, whichever tensor comes first.
    words = [np.array([[b"a%d" % k], [b"b%d" % k]], dtype=object) for k in range(3)]
    ids = [np.array([[k], [k + 100]], np.int64) for k in range(3)]
    store.log_predictions([PredictionBatch("m", 2, ["s0", "s1", "s2"], [now] * 3, {"w": words, "x": xs, "id": ids},
                                           {"p": [np.full((2, 1), k, np.float32) for k in range(3)]})])
    res = store.add_feedback("m", [_label("s1", 1.0, row=1), _label("s2", 0.0, row=0)], [], now)
    assert res.accepted == 2
    got = {e.request_id: e for e in store.examples_after("m", None, 10)}
    assert list(got["s1"].inputs) == ["w", "x", "id"]
    assert got["s1"].inputs["w"].tolist() == [b"b1"] and got["s2"].inputs["w"].tolist() == [b"a2"]
    np.testing.assert_array_equal(got["s1"].inputs["x"], xs[1][1])
    np.testing.assert_array_equal(got["s1"].inputs["id"], [101])
    np.testing.assert_array_equal(got["s2"].inputs["id"], [2])


def test_sqlite_segments_go_with_the_label_window(tmp_path):
    """The SQLite store keeps logged tensors in segment files: retention removes a whole file
    once everything in it is past the label window, and a label for it is then unknown."""
    import os

    store = open_store(str(tmp_path / "learning"), Retention(label_window_seconds=60))
    try:
        now = time.time()
        store.log_predictions([_pred("a", 1.0, now - 120)])
        (seg,) = os.listdir(store.segments.directory)
        path = os.path.join(store.segments.directory, seg)
        os.utime(path, (now - 120, now - 120))
        store.segments.close()  # a writer that rotated away from it (they do within the window)
        assert store.prune(now)["predictions"] == 1
        assert os.listdir(store.segments.directory) == []
        assert store.add_feedback("m", [_label("a", 1.0)], [], now).unknown_request_ids == ["a"]
    finally:
        store.close()


def test_sqlite_index_writer_is_started_again_after_it_died(tmp_path):
    store = open_store(str(tmp_path / "learning"))
    try:
        now = time.time()
        store.log_predictions([_pred("a", 1.0, now)])
        first = store.index._proc
        first.kill()
        first.wait()
        store.log_predictions([_pred("b", 2.0, now)])  # a new child writes it
        assert store.index._proc is not first
        res = store.add_feedback("m", [_label("a", 1.0), _label("b", 0.0)], [], now)
        assert res.accepted == 2 and res.unknown_request_ids == []
    finally:
        store.close()


def _server_ids(prefix: str, counters: list[int]) -> list[str]:
    return [f"{prefix}{c:016x}" for c in counters]


def test_server_made_ids_join_each_to_its_own_request(make_store):
    """Ids the server makes (a process prefix and a counter) answered out of order, with a
    straggler far behind and a client's uuid4().hex and a free-form id in the same batch: each
    label joins to its own request, and an id never logged (a counter inside a logged range)
    is unknown."""
    store = make_store()
    now = time.time()
    ids = _server_ids("0123456789abcdef", [7, 5, 6, 9, 1, 8]) + ["9f1c2d3e4b5a69788796a5b4c3d2e1f0", "client-42"]
    n = len(ids)
    xs = [np.full((1, 2), k, np.float32) for k in range(n)]
    store.log_predictions([PredictionBatch("m", 1, ids, [now] * n, {"x": xs},
                                           {"p": [np.zeros((1, 1), np.float32)] * n})])
    never = _server_ids("0123456789abcdef", [2, 3]) + _server_ids("0123456789abcdee", [7])
    res = store.add_feedback("m", [_label(rid, 1.0) for rid in ids + never], [], now)
    assert res.accepted == n and res.unknown_request_ids == never
    got = {e.request_id: float(e.inputs["x"][0]) for e in store.examples_after("m", None, 100)}
    assert got == {rid: float(k) for k, rid in enumerate(ids)}


def test_server_made_ids_far_apart_in_one_batch(make_store):
    """Counters more than a run's span apart (a request that took long to answer) still join."""
    from hotserve.learning import id_runs

    store = make_store()
    now = time.time()
    counters = [3, 4, 3 + 3 * id_runs.SPAN, 5 + 10 * id_runs.SPAN, 2]
    ids = _server_ids("00000000000000ff", counters)
    n = len(ids)
    store.log_predictions([PredictionBatch("m", 1, ids, [now - k for k in range(n)],
                                           {"x": [np.full((1, 2), k, np.float32) for k in range(n)]},
                                           {"p": [np.zeros((1, 1), np.float32)] * n})])
    res = store.add_feedback("m", [_label(rid, 1.0) for rid in reversed(ids)], [], now)
    assert res.accepted == n and res.unknown_request_ids == []
    got = {e.request_id: (float(e.inputs["x"][0]), e.predicted_at) for e in store.examples_after("m", None, 100)}
    assert got == {rid: (float(k), pytest.approx(now - k)) for k, rid in enumerate(ids)}


def test_id_runs_pack_and_split():
    from hotserve.learning import id_runs

    assert id_runs.packed("00000000000000ff" + "0" * 15 + "7") == (255, 7)
    assert id_runs.packed("ffffffffffffffff" + "f" * 16) == (-1, -1)  # signed, as SQLite stores them
    for not_packed in ["0" * 31, "0" * 33, "A" * 32, "g" * 32, " " + "0" * 31, "client-42"]:
        assert id_runs.packed(not_packed) is None
    ids = _server_ids("0" * 16, [1, 2]) + ["x", "F" * 32] + _server_ids("1" * 16, [1])
    assert id_runs.split(ids) == ([0, 1, 4], [2, 3])
    runs = list(id_runs.runs(ids, [10.0, 11.0, 12.0, 13.0, 14.0], [0, 1, 4]))
    assert sorted((p, a, b) for p, a, b, *_ in runs) == [(0, 1, 2), (0x1111111111111111, 1, 1)]
    for prefix, first, last, counters, rows, times in runs:
        for c in range(first, last + 1):
            k, t = id_runs.find(c, counters, rows, times)
            assert ids[k] == f"{prefix:016x}{c:016x}" and t == 10.0 + k


def test_sqlite_database_from_before_runs_is_upgraded(tmp_path):
    """A feedback database made before request ids were packed as runs gets the new columns,
    and its chunks their request counts."""
    import sqlite3

    d = tmp_path / "learning"
    d.mkdir()
    conn = sqlite3.connect(d / "feedback.sqlite")
    conn.executescript(
        "CREATE TABLE prediction_chunks (id INTEGER PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL,"
        " t_last REAL NOT NULL, segment TEXT NOT NULL, offset INTEGER NOT NULL, inputs_len INTEGER NOT NULL,"
        " outputs_len INTEGER NOT NULL, first_id INTEGER NOT NULL, last_id INTEGER NOT NULL);"
        "INSERT INTO prediction_chunks VALUES (1, 'm', 1, 0.0, 'old.seg', 0, 10, 10, 1, 3);")
    conn.close()
    store = open_store(str(d))
    try:
        cols = {r[1] for r in store._conn().execute("PRAGMA table_info(prediction_chunks)")}
        assert {"n", "first_run", "last_run"} <= cols
        # The old chunk counts its three requests; its empty run range deletes nothing.
        assert store._conn().execute("SELECT n, first_run > last_run FROM prediction_chunks WHERE id = 1").fetchone() == (3, 1)
        now = time.time()
        store.log_predictions([_pred(_server_ids("0" * 16, [1])[0], 1.0, now)])
        assert store.add_feedback("m", [_label(_server_ids("0" * 16, [1])[0], 1.0)], [], now).accepted == 1
    finally:
        store.close()
