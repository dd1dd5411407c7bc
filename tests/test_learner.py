"""The learner as a real process beside a real server: it trains on joined feedback, publishes
a better version through the repository (lineage in the manifest) which the server swaps in,
the served predictions move the way the feedback said, and a candidate made worse on purpose
is refused by the gate (an event, a metric and a log line naming the metrics; nothing published)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from hotserve.repository import manifest

torch = pytest.importorskip("torch")

TESTS = os.path.dirname(os.path.abspath(__file__))
TRAINER = "hotserve.learning.torch_trainer:TorchTrainer"
MODULE = "learning_models:logistic"


def _first_version(base: str, build: str) -> None:
    """Version 1: the module's initial state (p = 0.5 everywhere), exported by the trainer."""
    sys.path.insert(0, TESTS)
    try:
        from hotserve.learning.torch_trainer import TorchTrainer
        from hotserve.repository.publish import publish

        t = TorchTrainer(module=MODULE)
        t.load(None)
        t.export(os.path.join(build, "v1"))
        publish(os.path.join(build, "v1"), base, 1)
    finally:
        sys.path.remove(TESTS)


def _learn(base: str, learning_dir: str, trainer: str = TRAINER, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": TESTS + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "hotserve", "learn", "--model_name", "m", "--model_base_path", base,
           "--learning_dir", learning_dir, "--trainer", trainer, "--trainer_option", f"module={MODULE}",
           "--trainer_option", "lr=0.3", "--every_examples", "100", "--every_seconds", "0", "--holdout_every", "4",
           "--min_holdout", "20", "--epochs", "20", "--max_rounds", "1", "--duration", "30", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)


def _events(client, url: str, kind: str, after: int, wait: float = 20) -> list[dict]:
    r = client.get(url + "/v1/events", params={"after": after, "wait": wait, "kind": kind, "model": "m"})
    return r.json()["events"]


def _rows(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(0, 1, (n, 4)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)  # the clicks the feedback reports


def test_learner_publishes_better_and_refuses_worse(repo, start_server, tmp_path):
    base, build = repo
    _first_version(base, build)
    learning_dir = str(tmp_path / "learn")
    server = start_server(base, "--learning_dir", learning_dir, "--prediction_log_sampling_rate", "1",
                          "--admin_token", "t")
    rng = np.random.default_rng(0)
    with httpx.Client(timeout=30) as client:
        after = client.get(server.url + "/v1/events", params={"after": 0}).json()["last"]
        # Predictions (one request of 200 rows), then the feedback: labels joined by id and row.
        x, y = _rows(rng, 200)
        r = client.post(server.url + "/v1/models/m:predict", json={"instances": x.tolist()})
        before = np.asarray(r.json()["predictions"]).reshape(-1)
        assert np.allclose(before, 0.5)
        rid = r.headers["x-request-id"]
        fb = {"feedback": [{"request_id": rid, "row": i, "label": [float(v)]} for i, v in enumerate(y)]}
        assert client.post(server.url + "/v1/models/m:feedback", json=fb).json()["accepted"] == 200

        out = _learn(base, learning_dir)
        assert out.returncode == 0, out.stdout + out.stderr
        (ev,) = _events(client, server.url, "learner_candidate", after)
        assert ev["outcome"] == "published" and ev["version"] == 2 and ev["parent"] == 1, ev
        assert ev["candidate_metrics"]["log_loss"] < ev["parent_metrics"]["log_loss"]
        lineage = manifest.read(os.path.join(base, "2"))["lineage"]
        assert lineage["source"] == "learner" and lineage["parent"] == 1
        assert lineage["watermark"] == ev["watermark"] and lineage["examples_used"] + lineage["holdout_examples"] == 200
        assert lineage["metrics"]["gate_metric"] == "log_loss"
        assert lineage["metrics"]["candidate"]["log_loss"] == pytest.approx(ev["candidate_metrics"]["log_loss"])

        # The server swaps version 2 in; predictions moved the way the feedback said.
        served = [e for e in _events(client, server.url, "learned_version_served", after)]
        assert served and served[0]["version"] == 2 and served[0]["freshness_seconds"] >= 0
        r = client.post(server.url + "/v1/models/m:predict", json={"instances": x.tolist()})
        assert r.headers["x-model-version"] == "2"
        after_p = np.asarray(r.json()["predictions"]).reshape(-1)
        assert after_p[y == 1].mean() > 0.6 and after_p[y == 0].mean() < 0.4

        status = client.get(server.url + "/v1/models/m/learning").json()
        assert status["learner"]["parent_version"] == 2 and status["learner"]["watermark"] == ev["watermark"]
        assert status["learner"]["last_candidate"]["outcome"] == "published"
        # The second predict call waits for its label: pending.
        assert status["examples"] == {"stored": 200, "joined_total": 200, "added_total": 200,
                                      "pending_predictions": 1, "last_watermark": ev["watermark"]}
        assert status["freshness"]["count"] == 1

        # More feedback, and a trainer that gets worse on purpose: the gate refuses it.
        seq = ev["seq"]
        x2, y2 = _rows(rng, 200)
        examples = [{"inputs": {"x": row.tolist()}, "label": [float(v)]} for row, v in zip(x2, y2)]
        assert client.post(server.url + "/v1/models/m:feedback", json={"examples": examples}).status_code == 200
        out = _learn(base, learning_dir, "learning_models:WorseTrainer", "--max_metric_drop", "0.01")
        assert out.returncode == 0, out.stdout + out.stderr
        (ev,) = _events(client, server.url, "learner_candidate", seq)
        assert ev["outcome"] == "refused" and ev["version"] is None and ev["parent"] == 2, ev
        assert ev["candidate_metrics"]["log_loss"] - ev["parent_metrics"]["log_loss"] > 0.01
        log_line = [line for line in out.stderr.splitlines() + out.stdout.splitlines() if "REFUSED" in line]
        assert log_line and "log_loss" in log_line[0] and "max_metric_drop 0.01" in log_line[0], out.stderr
        assert sorted(os.listdir(base)) == ["1", "2"]  # nothing published
        metrics = client.get(server.url + "/metrics").text
        assert 'hotserve_learner_candidates_total{model="m",outcome="refused"} 1' in metrics
        assert 'hotserve_learner_candidates_total{model="m",outcome="published"} 1' in metrics
        r = client.post(server.url + "/v1/models/m:predict", json={"instances": x.tolist()})
        assert r.headers["x-model-version"] == "2"

    # `hotserve routing` shows the learning status beside the routing.
    out = subprocess.run([sys.executable, "-m", "hotserve", "routing", "m", "--url", server.url, "--token", "t"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "learner: watermark" in out.stdout and "last candidate: refused" in out.stdout, out.stdout


def test_first_version_without_baseline(tmp_path):
    """No version in the repository yet: the learner starts fresh and publishes version 1 with no gate."""
    from hotserve.learning.store import NewExample
    from hotserve.learning.stores import open_store

    base, learning_dir = str(tmp_path / "m"), str(tmp_path / "learn")
    store = open_store(learning_dir)
    rng = np.random.default_rng(1)
    x, y = _rows(rng, 200)  # ~150 train (every 4th is held out): over --every_examples 100
    store.add_feedback("m", [], [NewExample({"x": r}, {"p": np.array([v], np.float32)}) for r, v in zip(x, y)],
                       time.time())
    store.close()
    out = _learn(base, learning_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    lineage = manifest.read(os.path.join(base, "1"))["lineage"]
    assert lineage["parent"] is None and lineage["metrics"]["parent"] == {}
    assert "no baseline (first version)" in out.stderr


def test_learner_keeps_its_newest_versions_only(tmp_path):
    """--keep_versions: older learner-made versions go; operator-published ones and the serving one stay."""
    from types import SimpleNamespace

    from hotserve.examples import make_affine
    from hotserve.learning.learner import Learner, LearnerOptions
    from hotserve.learning.stores import open_store
    from hotserve.repository.publish import publish

    base = str(tmp_path / "m")
    src = make_affine(str(tmp_path / "b" / "model.onnx"), 1.0)
    for v in range(1, 7):
        extra = {} if v == 2 else {"lineage": {"source": "learner", "model": "m"}}
        publish(src, base, v, **extra)
    store = open_store(str(tmp_path / "learn"))
    learner = Learner("m", base, SimpleNamespace(gate_metric="log_loss", higher_is_better=False), store,
                      LearnerOptions(keep_versions=2))
    learner.parent = 3  # pretend version 3 is the one serving
    learner._retire_old_versions()
    store.close()
    assert sorted(os.listdir(base), key=int) == ["2", "3", "5", "6"]
