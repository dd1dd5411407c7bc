"""s3:// model repositories against a real S3 API: moto's server mode as a process on 127.0.0.1
(tests/moto_server.py), boto3 as the client, real hotserve server processes.

Pinned here: publish to S3 (CLI), hot swap under load with no failed request, a slow multipart
upload never served early (published and hand-copied), a corrupt object never served, an
outage (the S3 server stopped, then restarted on the same port) that unloads nothing, and the
polling bill (<= 1 LIST per poll interval per model, no GET of an unchanged manifest or
routing state).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import LoadClients, status, wait_for, wait_state
from hotserve.examples import make_affine
from hotserve.repository import manifest
from hotserve.repository.publish import publish
from hotserve.repository.storage import LocalStorage
from moto_server import ENV, MotoServer

pytest.importorskip("boto3")
pytest.importorskip("moto")

MiB = 1 << 20


@pytest.fixture
def s3(moto, monkeypatch, tmp_path):
    """A fresh bucket; the environment (this process and the servers it starts) points at moto."""
    for k, v in {**ENV, "AWS_ENDPOINT_URL": moto.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    client = moto.client()
    client.create_bucket(Bucket=bucket)
    return client, bucket


def affine(build: str, offset: float, extra_bytes: int = 0) -> str:
    """A version directory: y = x + offset (ONNX), optionally padded with a weights file."""
    d = os.path.join(build, f"affine-{offset}-{uuid.uuid4().hex[:6]}")
    make_affine(os.path.join(d, "model.onnx"), float(offset))
    if extra_bytes:
        with open(os.path.join(d, "weights.bin"), "wb") as f:
            f.write(os.urandom(extra_bytes))
    return d


def s3_flags(tmp_path) -> list[str]:
    return ["--model_cache_dir", str(tmp_path / "cache")]


def metric(server, name: str, **labels) -> float:
    code, body = server.get("/monitoring/prometheus/metrics")
    assert code == 200
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def events(server, after: int = 0, kind: str = "", wait: float = 0.0) -> tuple[list[dict], int]:
    code, body = server.get(f"/v1/events?after={after}&wait={wait}&model=m" + (f"&kind={kind}" if kind else ""),
                            timeout=wait + 10)
    assert code == 200, body
    doc = json.loads(body)
    return doc["events"], doc["last"]


def wait_event(server, kind: str, match=lambda e: True, timeout: float = 30.0, after: int = 0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs, last = events(server, after, kind, wait=min(5.0, max(0.1, deadline - time.monotonic())))
        for e in evs:
            if match(e):
                return e
        after = max(after, last)
    raise AssertionError(f"no {kind} event within {timeout}s; log:\n{server.log()[-3000:]}")


def wait_lists(server, n: int, timeout: float = 20.0) -> None:
    """Wait until the server made n more LIST requests (n more polls)."""
    start = metric(server, "hotserve_storage_requests_total", model="m", kind="list")
    wait_for(lambda: metric(server, "hotserve_storage_requests_total", model="m", kind="list") >= start + n,
             timeout, f"{n} more LIST requests")


def test_publish_cli_and_serve(s3, tmp_path, start_server):
    client, bucket = s3
    base = f"s3://{bucket}/models/m"
    src = affine(str(tmp_path), 1.0)
    out = subprocess.run([sys.executable, "-m", "hotserve", "publish", src, "--model_base_path", base],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"published version 1 at {base}/1" in out.stdout
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["models/m/1/hotserve_manifest.json", "models/m/1/model.onnx"]  # marker gone, manifest there
    out = subprocess.run([sys.executable, "-m", "hotserve", "versions", base, "--verify", "--settle_seconds", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "sha256 verified" in out.stdout

    server = start_server(base, *s3_flags(tmp_path))
    assert status(server)[1]["state"] == "AVAILABLE"
    log = server.log()
    assert "credentials from environment" in log
    assert ENV["AWS_SECRET_ACCESS_KEY"] not in log  # never log a secret
    # Loaded from the local cache, verified copy.
    cached = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "cache") for f in fs if f == "model.onnx"]
    assert len(cached) == 1


def test_hot_swap_under_load(s3, tmp_path, start_server):
    _, bucket = s3
    base = f"s3://{bucket}/models/m"
    publish(affine(str(tmp_path), 1.0), base, 1)
    server = start_server(base, *s3_flags(tmp_path))
    swaps = []
    with LoadClients(server.url, n=4) as load:
        load.wait_requests(50)
        for v in (2, 3):
            t0 = time.monotonic()
            publish(affine(str(tmp_path), float(v)), base, v)
            published = time.monotonic()
            wait_state(server, v, "AVAILABLE", timeout=30)
            swaps.append((published - t0, time.monotonic() - published))
            load.wait_requests(50)
    assert load.errors == [], load.errors[:5]
    assert {2, 3} <= load.versions
    # poll 0.2 s + download + load, well under poll interval + download + 1 s each
    for upload, seen in swaps:
        assert seen < 0.2 + 1.0 + 2.0, swaps
    print(f"\nS3 hot swaps: publish {[round(u, 3) for u, _ in swaps]} s, published -> AVAILABLE "
          f"{[round(s, 3) for _, s in swaps]} s, {load.count} requests, 0 failed")


def _blocking_progress(started: threading.Event, release: threading.Event, after_bytes: int):
    """An upload progress callback that holds the upload once after_bytes were sent (bounded)."""
    sent = [0]

    def progress(n: int) -> None:
        sent[0] += n
        if sent[0] >= after_bytes and not started.is_set():
            started.set()
            release.wait(60)
    return progress


def test_slow_multipart_publish_never_served_early(s3, tmp_path, start_server):
    from hotserve.repository.s3 import S3Storage

    client, bucket = s3
    base = f"s3://{bucket}/models/m"
    publish(affine(str(tmp_path), 1.0), base, 1)
    server = start_server(base, *s3_flags(tmp_path))
    seq = events(server)[1]
    storage = S3Storage(base, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=1)
    started, release = threading.Event(), threading.Event()
    # Held in the middle of the second part: the first part is uploaded, the object not yet listed.
    storage.upload_progress = _blocking_progress(started, release, 7 * MiB)
    src = affine(str(tmp_path), 2.0, extra_bytes=12 * MiB)  # 3 parts
    errors: list[BaseException] = []

    def run() -> None:
        try:
            publish(src, base, 2, storage=storage)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert started.wait(30)
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads"), "a multipart upload is in progress"
        wait_lists(server, 6)  # six polls (> settle time) with the upload held
        assert 2 not in status(server)
        assert not [e for e in events(server, seq, "load_start")[0] if e["version"] == 2]
    finally:
        release.set()
        t.join(60)
    assert not errors, errors
    wait_state(server, 2, "AVAILABLE", timeout=30)


def test_slow_multipart_hand_copy_never_served_early(s3, tmp_path, start_server):
    """A copy made by another tool (no manifest, like `aws s3 sync`): its listing does not change
    while a multipart upload is running, yet it is not settled until the upload completes."""
    client, bucket = s3
    base = f"s3://{bucket}/models/m"
    publish(affine(str(tmp_path), 1.0), base, 1)
    server = start_server(base, *s3_flags(tmp_path))  # --version_settle_seconds 0.5
    seq = events(server)[1]
    src = affine(str(tmp_path), 2.0)
    client.upload_file(os.path.join(src, "model.onnx"), bucket, "models/m/2/model.onnx")
    key = "models/m/2/weights.bin"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part = os.urandom(5 * MiB)
    etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=part)["ETag"]
    wait_lists(server, 8)  # 1.6 s: three times the settle time with an unchanged listing
    assert 2 not in status(server)
    assert not [e for e in events(server, seq, "load_start")[0] if e["version"] == 2]
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": 1}]})
    wait_state(server, 2, "AVAILABLE", timeout=30)


def test_corrupt_object_never_served(s3, tmp_path, start_server):
    client, bucket = s3
    base = f"s3://{bucket}/models/m"
    publish(affine(str(tmp_path), 1.0), base, 1)
    server = start_server(base, *s3_flags(tmp_path))
    good = affine(str(tmp_path), 2.0)
    good_bytes = open(os.path.join(good, "model.onnx"), "rb").read()
    corrupt = bytes([good_bytes[0] ^ 0xFF]) + good_bytes[1:]  # same size, different bytes
    doc = manifest.build_manifest(good, LocalStorage().stat_files(good))
    with LoadClients(server.url, n=2) as load:
        load.wait_requests(20)
        client.put_object(Bucket=bucket, Key="models/m/2/model.onnx", Body=corrupt)
        client.put_object(Bucket=bucket, Key="models/m/2/hotserve_manifest.json", Body=manifest.encode(doc))
        wait_state(server, 2, "END", timeout=30)
        st = status(server)[2]
        assert "sha256" in st["status"]["error_message"], st
        load.wait_requests(20)
        assert load.versions == {1}
        # Fixed in the store: the changed object makes the version eligible again.
        client.put_object(Bucket=bucket, Key="models/m/2/model.onnx", Body=good_bytes)
        wait_state(server, 2, "AVAILABLE", timeout=30)
        load.wait_requests(20)
    assert load.errors == [], load.errors[:5]
    assert 2 in load.versions


def test_outage_keeps_serving_then_recovers(monkeypatch, tmp_path, start_server):
    """The S3 server is stopped mid-run: served versions keep serving, status and metrics show the
    outage, nothing is unloaded; restarted on the same port, polling resumes."""
    moto = MotoServer(str(tmp_path / "moto-outage.log")).start()
    try:
        for k, v in {**ENV, "AWS_ENDPOINT_URL": moto.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(k, v)
        client = moto.client()
        client.create_bucket(Bucket="outage")
        base = "s3://outage/models/m"
        v1 = affine(str(tmp_path), 1.0)
        publish(v1, base, 1)
        server = start_server(base, *s3_flags(tmp_path))
        seq = events(server)[1]
        with LoadClients(server.url, n=2) as load:
            load.wait_requests(20)
            moto.stop()
            ev = wait_event(server, "storage_outage", lambda e: not e["ended"], after=seq)
            assert ev["serving"] == [1]
            code, body = server.get("/v1/models/m")
            doc = json.loads(body)
            assert doc["storage"]["available"] is False and "cannot list" in doc["storage"]["error"], doc
            assert doc["model_version_status"][0]["state"] == "AVAILABLE"
            assert metric(server, "hotserve_storage_available", model="m") == 0
            assert metric(server, "hotserve_storage_outages_total", model="m") == 1
            load.wait_requests(50)  # serving through the outage
            moto.start()  # same port; moto starts empty, like a store whose data was restored
            client = moto.client()
            client.create_bucket(Bucket="outage")
            publish(v1, base, 1)
            wait_event(server, "storage_outage", lambda e: e["ended"], after=seq)
            publish(affine(str(tmp_path), 2.0), base, 2)
            wait_state(server, 2, "AVAILABLE", timeout=30)
            load.wait_requests(20)
        assert load.errors == [], load.errors[:5]
        unloads = [e for e in events(server, seq, "unloaded")[0]]
        assert [e["version"] for e in unloads] in ([], [1])  # v1 unloaded only after v2 took over
        assert "storage" not in json.loads(server.get("/v1/models/m")[1])
        assert metric(server, "hotserve_storage_available", model="m") == 1
    finally:
        moto.stop()


def test_requests_per_poll(s3, tmp_path, start_server):
    """<= 1 LIST per poll interval per model, no GET of an unchanged manifest or routing state."""
    from hotserve.repository.routing_store import FileRoutingStore, RoutingState, update
    from hotserve.repository.storage import storage_for

    _, bucket = s3
    base = f"s3://{bucket}/models/m"
    publish(affine(str(tmp_path), 1.0), base, 1)
    publish(affine(str(tmp_path), 2.0), base, 2)
    store = FileRoutingStore(storage_for(base), base)
    update(store, lambda st: st.with_changes(labels={"stable": 2}))
    poll = 0.25
    server = start_server(base, *s3_flags(tmp_path), "--file_system_poll_wait_seconds", str(poll))
    wait_lists(server, 2)

    def counts() -> dict[str, float]:
        return {k: metric(server, "hotserve_storage_requests_total", model="m", kind=k)
                for k in ("list", "get", "head", "put", "delete")}

    # An idle window (nothing changes in the store) of 12 polls: every request in it is polling.
    before, t0 = counts(), time.monotonic()
    wait_lists(server, 12)
    after, seconds = counts(), time.monotonic() - t0
    lists = after["list"] - before["list"]
    assert lists <= seconds / poll + 1, (lists, seconds)
    assert lists >= 3  # it did poll
    assert after["get"] == before["get"], "an unchanged manifest or routing state was read again"
    assert after["head"] == before["head"] and after["put"] == before["put"]
    per_hour = lists / seconds * 3600
    # The routing state file changed (another replica wrote it; a new revision of the same
    # routing, so nothing loads): read once, at the next poll.
    update(store, lambda st: st)
    wait_for(lambda: counts()["get"] >= after["get"] + 1, 10, "the changed routing state to be read")
    wait_lists(server, 4)
    assert counts()["get"] == after["get"] + 1
    print(f"\nS3 polling at {poll}s: {lists:.0f} LIST in {seconds:.2f}s ({per_hour:.0f}/h per model; "
          f"{3600 / 1.0:.0f}/h at the default 1 s), 0 GET while idle")
