"""Invariants 2 and 5: a version that fails to load or validate, or a directory still being
written, never receives traffic; the previous version keeps serving; failures are visible."""

import os
import shutil
import time

import httpx

from conftest import LoadClients, affine_version, python_version, status, wait_for, wait_state
from hotserve.examples import make_affine
from hotserve.repository.publish import publish


def _log_count(server, text):
    return server.log().count(text)


def test_corrupt_model_file_is_never_served_and_next_good_one_is(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"this is not an onnx model")
    with LoadClients(server.url, n=3) as clients:
        publish(str(bad), base, 2)
        wait_state(server, 2, "END")
        st = status(server)[2]["status"]
        assert st["error_code"] != "OK" and "onnxruntime could not load" in st["error_message"]
        assert "version 2: failed to load" in server.log()
        clients.wait_requests(30)
        affine_version(base, 3, build)
        wait_for(lambda: 3 in clients.versions, 20, "version 3 to serve")
        clients.wait_requests(30)
    assert clients.errors == []
    assert clients.versions == {1, 3}


def test_version_failing_validation_never_goes_live(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    with LoadClients(server.url, n=2) as clients:
        python_version(base, 2, build, fail_predict=True)
        wait_state(server, 2, "END")
        msg = status(server)[2]["status"]["error_message"]
        assert "validation inference" in msg and "broken on purpose" in msg
        clients.wait_requests(30)
    assert clients.errors == [] and clients.versions == {1}
    assert status(server)[1]["state"] == "AVAILABLE"


def test_manifest_mismatch_is_refused(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    # Publish elsewhere, flip bytes of the model without changing its size, move it in.
    other = str(tmp_path / "other")
    path = affine_version(other, 2, build, offset=2)
    model = os.path.join(path, "model.onnx")
    data = bytearray(open(model, "rb").read())
    data[-8] ^= 0xFF
    open(model, "wb").write(bytes(data))
    os.rename(path, os.path.join(base, "2"))
    wait_state(server, 2, "END")
    assert "sha256" in status(server)[2]["status"]["error_message"]
    assert httpx.post(server.url + "/v1/models/m:predict", json={"instances": [[0, 0, 0, 0]]}).headers["x-model-version"] == "1"


def test_failed_version_is_retried_only_when_its_directory_changes(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"garbage")
    vdir = publish(str(bad), base, 2)[1]
    wait_state(server, 2, "END")
    # Several poll intervals (0.2 s) pass: no second attempt.
    time.sleep(1.5)
    assert _log_count(server, "version 2: failed to load") == 1
    # Fix the directory by hand: a changed directory is retried.
    good = make_affine(str(tmp_path / "good" / "model.onnx"), 2.0)
    shutil.copy(good, os.path.join(vdir, "model.onnx"))
    wait_state(server, 2, "AVAILABLE")
    r = httpx.post(server.url + "/v1/models/m:predict", json={"instances": [[0, 0, 0, 0]]})
    assert r.headers["x-model-version"] == "2" and r.json()["predictions"] == [[2.0] * 4]


def test_directory_still_being_written_is_never_served(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--version_settle_seconds", "2")
    payload = open(make_affine(str(tmp_path / "src" / "model.onnx"), 2.0), "rb").read()
    vdir = os.path.join(base, "2")
    os.makedirs(vdir)
    chunk = max(1, len(payload) // 12)
    with LoadClients(server.url, n=2) as clients:
        with open(os.path.join(vdir, "model.onnx"), "wb") as f:
            for i in range(0, len(payload), chunk):
                f.write(payload[i:i + chunk])
                # Taken before the bytes reach the file (flush), so a busy test process cannot
                # record it late and make the server look early.
                last_write = time.monotonic()
                f.flush()
                time.sleep(0.2)  # far below the 2 s settle time
                assert 2 not in clients.versions
                assert 2 not in status(server)
        wait_for(lambda: 2 in clients.versions, 20, "version 2 to serve once settled")
        served_after = time.monotonic() - last_write
    assert clients.errors == []
    # A partial file was never handed to a loader (it would have failed to load).
    assert "version 2: failed to load" not in server.log()
    assert served_after >= 2.0, served_after


def test_removing_newest_version_falls_back_without_failures(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    affine_version(base, 2, build)
    server = start_server(base)
    wait_state(server, 2, "AVAILABLE")
    with LoadClients(server.url, n=4, allow_backwards=True) as clients:
        clients.wait_requests(50)
        shutil.rmtree(os.path.join(base, "2"))
        wait_for(lambda: status(server).get(1, {}).get("state") == "AVAILABLE", 20, "fallback to version 1")
        wait_state(server, 2, "END")
        before = clients.count
        clients.wait_requests(50)
    assert clients.errors == [], clients.errors[:5]
    assert clients.versions == {1, 2} and clients.count > before
    log = server.log()
    assert log.index("version 1: available") < log.index("version 2: unloaded")


def test_storage_outage_keeps_serving_then_recovers(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    away = base + ".away"
    with LoadClients(server.url, n=2) as clients:
        os.rename(base, away)
        wait_for(lambda: "storage unavailable" in server.log(), 10, "the outage to be logged")
        time.sleep(0.6)  # several scans during the outage
        clients.wait_requests(30)
        assert status(server)[1]["state"] == "AVAILABLE"
        os.rename(away, base)
        affine_version(base, 2, build)
        wait_for(lambda: 2 in clients.versions, 20, "version 2 after recovery")
    assert clients.errors == []
    assert clients.versions == {1, 2}
