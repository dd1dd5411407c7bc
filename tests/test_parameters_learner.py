"""The learner with --publish deltas, as real processes: a candidate that passes the gate becomes a
parameter delta of the serving version (changed embedding rows and dense tensors) that the
server follows from the repository and serves as a new revision; a restarted learner replays
the log into its trainer and, every --full_every deltas, publishes a full version (revision 0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from conftest import wait_event

torch = pytest.importorskip("torch")

MODULE = "hotserve.learning.ctr:make"


def _learn(base: str, learning_dir: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "hotserve", "learn", "--model_name", "m", "--model_base_path", base,
           "--learning_dir", learning_dir, "--trainer", "hotserve.learning.torch_trainer:TorchTrainer",
           "--trainer_option", f"module={MODULE}", "--trainer_option", "lr=0.05", "--every_examples", "100",
           "--every_seconds", "0", "--holdout_every", "4", "--min_holdout", "20", "--epochs", "5",
           "--max_metric_drop", "1.0", "--publish", "deltas", "--max_rounds", "1", "--duration", "60", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _examples(rng, n: int) -> list[dict]:
    users = rng.integers(0, 20, n)  # a few users and ads: only their embedding rows change
    ads = rng.integers(0, 10, n)
    dense = rng.normal(0, 1, (n, 4))
    clicks = ((ads % 2 == 0) ^ (dense[:, 0] < 0)).astype(float)
    return [{"inputs": {"user": int(u), "ad": int(a), "dense": d.tolist()}, "label": [c]}
            for u, a, d, c in zip(users, ads, dense, clicks)]


def test_learner_publishes_deltas_the_server_serves_as_revisions(repo, start_server, tmp_path):
    from hotserve.learning.torch_trainer import TorchTrainer
    from hotserve.repository.publish import publish

    base, build = repo
    t = TorchTrainer(module=MODULE)
    t.load(None)
    t.export(os.path.join(build, "v1"))
    publish(os.path.join(build, "v1"), base, 1)
    learning_dir = str(tmp_path / "learn")
    server = start_server(base, "--learning_dir", learning_dir, "--admin_token", "t")
    rng = np.random.default_rng(0)
    probe = {"inputs": {"user": [0, 1, 400], "ad": [0, 1, 100], "dense": [[0.5, 0, 0, 0]] * 3}}
    with httpx.Client(timeout=30) as client:
        before = client.post(server.url + "/v1/models/m:predict", json=probe).json()["outputs"]
        after = client.get(server.url + "/v1/events", params={"after": 0}).json()["last"]
        assert client.post(server.url + "/v1/models/m:feedback", json={"examples": _examples(rng, 200)}).status_code == 200

        out = _learn(base, learning_dir)
        assert out.returncode == 0, out.stdout + out.stderr
        ev = wait_event(server, "delta_applied", after=after, source="learner")
        assert ev["version"] == 1 and ev["revision"] == 1 and "user_embedding.weight" in ev["tensors"]
        assert 0 < ev["rows"] <= 30  # the rows of the users and ads the feedback named, not the tables
        cand = wait_event(server, "learner_candidate", after=after)
        assert cand["outcome"] == "published_delta" and cand["version"] == 1, cand
        served = wait_event(server, "learned_version_served", after=after)
        assert served["version"] == 1 and served["freshness_seconds"] >= 0
        r = client.post(server.url + "/v1/models/m:predict", json=probe)
        assert r.headers["x-model-version"] == "1" and r.headers["x-model-revision"] == "1"
        now = np.asarray(r.json()["outputs"])
        assert not np.allclose(now[:2], np.asarray(before)[:2])  # users/ads 0, 1 were trained on
        commit = json.load(open(os.path.join(base, "1", "deltas", "00000001.json")))
        assert commit["source"] == "learner" and commit["lineage"]["examples_used"] > 0

        # A new learner process replays the log into its trainer; --full_every 1: a full version is due.
        assert client.post(server.url + "/v1/models/m:feedback", json={"examples": _examples(rng, 200)}).status_code == 200
        out = _learn(base, learning_dir, "--full_every", "1")
        assert out.returncode == 0, out.stdout + out.stderr
        wait_event(server, "swap", after=after, default=2)
        r = client.post(server.url + "/v1/models/m:predict", json=probe)
        assert r.headers["x-model-version"] == "2" and r.headers["x-model-revision"] == "0"
