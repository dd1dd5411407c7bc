"""POST /v1/models/{m}:feedback on a real server: labels join logged predictions, examples are
added, a 200 survives kill -9 (SQLite and Redis stores), bad calls store nothing and say why,
and the `hotserve feedback` CLI posts a JSONL file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from conftest import affine_version
from hotserve.learning.stores import open_store

X = [[1.0, 2.0, 3.0, 4.0]]


def _store_flags(kind: str, tmp_path, request) -> tuple[list[str], str]:
    if kind == "sqlite":
        return ["--learning_dir", str(tmp_path / "learn")], str(tmp_path / "learn")
    import redis

    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return ["--feedback_store", url], url


def _stored(server) -> int:
    return json.loads(server.get("/v1/models/m/learning")[1])["examples"]["stored"]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_feedback_survives_kill_9(kind, repo, start_server, tmp_path, request):
    base, build = repo
    affine_version(base, 1, build)
    flags, url = _store_flags(kind, tmp_path, request)
    server = start_server(base, *flags, "--prediction_log_sampling_rate", "1")
    with httpx.Client(timeout=10) as client:
        rids = [client.post(server.url + "/v1/models/m:predict", json={"instances": [[i, i, i, i]]})
                .headers["x-request-id"] for i in range(5)]
        body = {"feedback": [{"request_id": r, "label": [i, i, i, i], "weight": 2.0} for i, r in enumerate(rids)],
                "examples": [{"inputs": {"x": [9, 9, 9, 9]}, "label": [1, 2, 3, 4]}]}
        r = client.post(server.url + "/v1/models/m:feedback", json=body)
        server.proc.send_signal(signal.SIGKILL)  # right after the 200: no shutdown, no flush
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 6 and r.json()["unknown_request_ids"] == []
    server.proc.wait(10)
    store = open_store(url)  # what a restarted server and the learner read
    try:
        got = store.examples_after("m", None, 100)
    finally:
        store.close()
    assert [e.request_id for e in got] == [*rids, None]
    assert [float(e.label["y"][0]) for e in got] == [0.0, 1.0, 2.0, 3.0, 4.0, 1.0]
    np.testing.assert_array_equal(got[3].inputs["x"], np.full(4, 3.0, np.float32))  # joined from the logged prediction
    assert got[0].weight == 2.0 and got[0].version == 1
    again = start_server(base, *flags)
    assert _stored(again) == 6


def test_bad_feedback_stores_nothing_and_says_why(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--learning_dir", str(tmp_path / "learn"), "--prediction_log_sampling_rate", "1")
    url = server.url + "/v1/models/m:feedback"
    good_example = {"inputs": {"x": [1, 2, 3, 4]}, "label": [1, 1, 1, 1]}
    cases = [
        (b'{"feedback": [', 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"{}", 400, "nothing to store"),
        (json.dumps({"feedbacks": []}).encode(), 400, "unknown key"),
        # One good item beside a bad one: the whole call is refused.
        (json.dumps({"examples": [good_example, {"inputs": {"x": [1, 2]}, "label": [1, 1, 1, 1]}]}).encode(), 400,
         "examples[1].inputs.x: shape [2] does not fit one row of DT_FLOAT [-1, 4]"),
        (json.dumps({"examples": [good_example], "feedback": [{"request_id": "a", "label": [1, 2, 3]}]}).encode(), 400,
         "feedback[0].label: shape [3]"),
        (json.dumps({"feedback": [{"request_id": "a", "label": ["x", "y", "z", "w"]}]}).encode(), 400,
         "expected numbers of type DT_FLOAT"),
        (json.dumps({"feedback": [{"request_id": "", "label": [1, 1, 1, 1]}]}).encode(), 400, "request_id must be"),
        (json.dumps({"feedback": [{"request_id": "a", "label": [1, 1, 1, 1], "weight": -1}]}).encode(), 400,
         "weight must be a positive number"),
        (json.dumps({"examples": [{"inputs": {"z": [1, 2, 3, 4]}, "label": [1, 1, 1, 1]}]}).encode(), 400,
         "the model takes ['x']; missing ['x']; unknown ['z']"),
        (json.dumps({"examples": [good_example] * 10_001}).encode(), 413, "the limit is 10000"),
    ]
    with httpx.Client(timeout=30) as client:
        for body, status, why in cases:
            r = client.post(url, content=body)
            assert r.status_code == status, (body[:80], r.text)
            assert why in r.json()["error"], (why, r.text)
        r = client.post(url, content=b"{" + b" " * (33 << 20) + b"}")
        assert r.status_code == 413 and "over the limit" in r.json()["error"]
        r = client.post(server.url + "/v1/models/nope:feedback", json={"examples": [good_example]})
        assert r.status_code == 404 and "nope" in r.json()["error"]
        r = client.get(url)
        assert r.status_code == 405
        assert _stored(server) == 0  # nothing of any refused call was stored
        r = client.post(url, json={"examples": [good_example]})
        assert r.status_code == 200 and r.json()["accepted"] == 1 and _stored(server) == 1
    metrics = server.get("/metrics")[1].decode()
    assert 'hotserve_feedback_items_total{model="m",outcome="rejected"} 11' in metrics


def test_feedback_needs_a_store(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    r = httpx.post(server.url + "/v1/models/m:feedback", json={"examples": []}, timeout=10)
    assert r.status_code == 400 and "--learning_dir" in r.json()["error"]


def test_feedback_cli_posts_jsonl(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--learning_dir", str(tmp_path / "learn"), "--prediction_log_sampling_rate", "1")
    rid = httpx.post(server.url + "/v1/models/m:predict", json={"instances": X}, timeout=10).headers["x-request-id"]
    path = tmp_path / "labels.jsonl"
    lines = [{"request_id": rid, "label": [1, 1, 1, 1]}, {"request_id": "gone", "label": [0, 0, 0, 0]}]
    lines += [{"inputs": {"x": [i, 0, 0, 0]}, "label": [i, 0, 0, 0]} for i in range(5)]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = subprocess.run([sys.executable, "-m", "hotserve", "feedback", "m", str(path), "--url", server.url,
                          "--batch_size", "3"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "accepted 6 of 7; 1 unknown request id(s): gone" in out.stdout
    assert _stored(server) == 6
    path.write_text(json.dumps({"request_id": rid, "label": [1, 2]}) + "\n")
    out = subprocess.run([sys.executable, "-m", "hotserve", "feedback", "m", str(path), "--url", server.url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "HTTP 400" in out.stderr and "shape [2]" in out.stderr
