"""Parameter deltas on an s3:// repository (moto's S3 server as a process): the delta log is
written through Storage with a conditional PUT per commit (two writers never both take one
entry), a server follows it, and a restarted server replays it from S3."""

from __future__ import annotations

import os
import uuid

import httpx
import numpy as np
import pytest

from conftest import one_worker_unless_asked, wait_for
from hotserve.examples import make_embedding_model
from hotserve.launcher import ServerProcess
from hotserve.repository.deltas import DeltaLog
from hotserve.repository.publish import publish
from moto_server import ENV, MotoServer

pytest.importorskip("boto3")
pytest.importorskip("moto")

TOKEN = "s3-param"


@pytest.fixture
def s3_base(tmp_path, monkeypatch):
    moto = MotoServer(str(tmp_path / "moto.log")).start()
    try:
        for k, v in {**ENV, "AWS_ENDPOINT_URL": moto.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(k, v)
        bucket = f"t-{uuid.uuid4().hex[:12]}"
        moto.client().create_bucket(Bucket=bucket)
        yield f"s3://{bucket}/models/m"
    finally:
        moto.stop()


def _server(tmp_path, base: str, name: str) -> ServerProcess:
    s = ServerProcess(["--model_name", "m", "--model_base_path", base, "--admin_token", TOKEN,
                       *one_worker_unless_asked(["--file_system_poll_wait_seconds", "0.2",
                                                 "--model_cache_dir", str(tmp_path / f"cache-{name}")])],
                      str(tmp_path / f"{name}.log"), env=os.environ.copy())
    s.start()
    s.wait_ready()
    return s


def test_deltas_on_s3_are_conditional_followed_and_replayed(tmp_path, s3_base):
    from hotserve.repository.storage import storage_for

    publish(make_embedding_model(str(tmp_path / "b" / "model.onnx"), 100, 4, 2), s3_base, 1)
    probe = {"inputs": {"item": [5], "dense": [[0.0, 0.0]]}}
    a = _server(tmp_path, s3_base, "a")
    try:
        r = httpx.post(a.url + "/v1/models/m/versions/1:update_parameters", headers={"Authorization": f"Bearer {TOKEN}"},
                       json={"updates": [{"name": "item_embedding", "rows": [5], "values": [[1.0, 2.0, 3.0, 4.0]]}]})
        assert r.status_code == 200 and r.json()["revision"] == 1, r.text
        want = httpx.post(a.url + "/v1/models/m:predict", json=probe).json()
        log = DeltaLog(storage_for(s3_base), f"{s3_base}/1")
        assert log.commits() == [1]
        assert log.append(1, "rollback", 0, 1) is None  # entry 1 is taken: the conditional PUT refuses
        # Another writer (a replica, the learner) appends entry 2; the server follows it from S3.
        assert log.append(2, "rollback", 0, 1, extra={"reason": "test"}) is not None
        wait_for(lambda: httpx.post(a.url + "/v1/models/m:predict", json=probe).headers["x-model-revision"] == "0", 20,
                 "the server to follow the rollback entry another writer put on S3")
        assert httpx.post(a.url + "/v1/models/m:predict", json=probe).json() != want
    finally:
        a.stop()
    b = _server(tmp_path, s3_base, "b")
    try:
        r = httpx.post(b.url + "/v1/models/m:predict", json=probe)
        assert r.headers["x-model-revision"] == "0"
        r = httpx.post(b.url + "/v1/admin/models/m/rollback", json={"revision": "1.1"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        assert httpx.post(b.url + "/v1/models/m:predict", json=probe).json() == want
    finally:
        b.stop()
