"""Remote stores beyond the S3 server tests: settings, the local cache, gs:// against a GCS
emulator process, and what can run of hdfs:// and webhdfs:// here (no Hadoop on this machine:
see docs/storage.md for what was and was not tested)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from conftest import status, wait_state
from hotserve.examples import make_affine
from hotserve.repository.cache import COMPLETE_MARKER, VersionCache
from hotserve.repository.publish import publish
from hotserve.repository.scanner import VersionScanner
from hotserve.repository.storage import StorageUnavailable, storage_for
from moto_server import ENV, free_port

pytest.importorskip("boto3")


def version_src(build, offset: float) -> str:
    return make_affine(os.path.join(str(build), f"a-{offset}-{uuid.uuid4().hex[:6]}", "model.onnx"), offset)


# -- S3 settings ---------------------------------------------------------------------------
def test_s3_settings_the_tf_serving_way():
    from hotserve.repository.s3 import describe_credentials, settings_from_env

    s = settings_from_env({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0",
                           "AWS_REGION": "eu-west-1", "S3_CONNECT_TIMEOUT_MSEC": "250"})
    assert s["endpoint_url"] == "http://minio:9000" and s["use_ssl"] is False and s["verify"] is False
    assert s["region_name"] == "eu-west-1" and s["connect_timeout"] == 0.25
    s = settings_from_env({"S3_ENDPOINT": "minio:9000"})
    assert s["endpoint_url"] == "https://minio:9000" and s["use_ssl"] and s["verify"]
    assert settings_from_env({"AWS_ENDPOINT_URL": "http://a:1", "S3_ENDPOINT": "b:2"})["endpoint_url"] == "http://a:1"
    assert settings_from_env({})["endpoint_url"] is None
    with pytest.raises(ValueError, match="S3_REQUEST_TIMEOUT_MSEC"):
        settings_from_env({"S3_REQUEST_TIMEOUT_MSEC": "soon"})
    said = describe_credentials({"AWS_ACCESS_KEY_ID": "AKIAABCDEFGH1234", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"})
    assert "s3cr3t" not in said and "AKIAABCDEFGH1234" not in said and "environment" in said


def test_unknown_scheme_and_missing_extra_say_what_to_do():
    with pytest.raises(ValueError, match=r"supported: .*s3://"):
        storage_for("ftp://host/models")


# -- the cache, against the S3 server -------------------------------------------------------
@pytest.fixture
def bucket(moto, monkeypatch):
    for k, v in {**ENV, "AWS_ENDPOINT_URL": moto.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    name = f"c-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return name


def test_cache_keeps_what_serves_plus_a_few(bucket, tmp_path):
    base = f"s3://{bucket}/m"
    for v in range(1, 6):
        publish(version_src(tmp_path, v), base, v)
    storage = storage_for(base)
    storage.cache = cache = VersionCache(str(tmp_path / "cache"), keep_unused=1)
    serving = storage.local_dir(f"{base}/1")
    for v in (2, 3, 4):
        d = storage.local_dir(f"{base}/{v}")
        assert os.path.isfile(os.path.join(d, COMPLETE_MARKER))
        storage.release_local_dir(f"{base}/{v}")
    left = sorted(v for v in os.listdir(os.path.dirname(os.path.dirname(serving)))
                  if any(not n.endswith(".lock") for n in os.listdir(os.path.join(os.path.dirname(os.path.dirname(serving)), v))))
    assert left == ["1", "4"]  # the one serving, plus the most recently used other
    assert os.path.isfile(os.path.join(serving, "model.onnx"))
    # A cached entry is reused without a download: only the version's listing is requested.
    kinds: list[str] = []
    storage.on_request = kinds.append
    assert storage.local_dir(f"{base}/4") == d
    assert kinds == ["list"]
    cache.release(f"{base}/4")
    cache.release(f"{base}/1")


def test_partial_download_is_retried_never_used(bucket, tmp_path):
    from hotserve.repository.s3 import S3Storage

    class FlakyS3(S3Storage):
        """Truncates the first download of model.onnx: a connection that dropped mid-body."""
        cut = 0

        def download(self, path, local_path, size=None):
            super().download(path, local_path, size)
            if path.endswith("model.onnx") and not self.cut:
                self.cut += 1
                with open(local_path, "r+b") as f:
                    f.truncate(10)

    base = f"s3://{bucket}/m"
    publish(version_src(tmp_path, 1.0), base, 1)
    storage = FlakyS3(base)
    storage.cache = VersionCache(str(tmp_path / "cache"), backoff_seconds=0.01)
    d = storage.local_dir(f"{base}/1")
    assert storage.cut == 1
    assert os.path.getsize(os.path.join(d, "model.onnx")) > 10
    assert not [n for n in os.listdir(os.path.dirname(d)) if ".partial-" in n]


def test_unreachable_store_is_transient_not_a_failed_version(tmp_path, monkeypatch):
    for k, v in {**ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_EC2_METADATA_DISABLED": "true",
                 "S3_CONNECT_TIMEOUT_MSEC": "200", "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(k, v)
    storage = storage_for("s3://nowhere/m")
    storage.cache = VersionCache(str(tmp_path / "cache"), attempts=2, backoff_seconds=0.01)
    with pytest.raises(StorageUnavailable, match="download failed after 2"):
        storage.local_dir("s3://nowhere/m/1")
    with pytest.raises(StorageUnavailable):
        VersionScanner(storage, "s3://nowhere/m").scan()


def test_empty_prefix_is_an_outage_not_no_versions(bucket):
    with pytest.raises(StorageUnavailable, match="nothing listed"):
        VersionScanner(storage_for(f"s3://{bucket}/nothing-here"), f"s3://{bucket}/nothing-here").scan()


# -- gs:// against a GCS emulator process -----------------------------------------------------
@pytest.fixture
def gcs(tmp_path, monkeypatch):
    pytest.importorskip("gcsfs")
    exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    if not os.path.exists(exe):
        pytest.skip("gcp-storage-emulator is not installed (test extra)")
    port = free_port()
    log = open(tmp_path / "gcs.log", "wb")
    proc = subprocess.Popen([exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
                             "--default-bucket", "gbucket", "--quiet"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    import socket

    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"GCS emulator did not start: {(tmp_path / 'gcs.log').read_text()}")
            time.sleep(0.05)
    yield "gs://gbucket/models/m"
    proc.terminate()
    proc.wait(10)


def test_gcs_publish_serve_and_swap(gcs, tmp_path, start_server):
    publish(version_src(tmp_path, 1.0), gcs, 1)
    server = start_server(gcs, "--model_cache_dir", str(tmp_path / "cache"))
    assert status(server)[1]["state"] == "AVAILABLE"
    publish(version_src(tmp_path, 2.0), gcs, 2)
    wait_state(server, 2, "AVAILABLE", timeout=30)
    code, body = server.get("/monitoring/prometheus/metrics")
    assert 'hotserve_storage_requests_total{model="m",kind="list"}' in body.decode()


# -- hdfs:// and webhdfs:// -----------------------------------------------------------------------
def test_hdfs_without_libhdfs_says_so():
    pytest.importorskip("pyarrow")
    with pytest.raises(ValueError, match="libhdfs|JAVA_HOME|Hadoop"):
        storage_for(f"hdfs://127.0.0.1:{free_port()}/models/m")


def test_webhdfs_unreachable_namenode_is_an_outage():
    pytest.importorskip("requests")
    base = f"webhdfs://127.0.0.1:{free_port()}/models/m"
    storage = storage_for(base)
    assert storage.atomic_rename and not storage.tree_listing
    with pytest.raises(StorageUnavailable):
        VersionScanner(storage, base).scan()


def test_rename_store_adapter_publish_scan_and_cache(tmp_path):
    """The adapter path hdfs:// and webhdfs:// take (walked listings, publish by atomic rename,
    downloads into the cache), over fsspec's local filesystem since no namenode runs here."""
    import fsspec

    from hotserve.repository.fsspec_store import FsspecStorage

    root = str(tmp_path / "hdfs-root")
    base = "webhdfs://namenode:9870/models/m"
    storage = FsspecStorage(base, fsspec.filesystem("file"), "webhdfs", tree_listing=False, atomic_rename=True,
                            to_fs_path=lambda p: root + p.split("9870", 1)[1])
    storage.cache = VersionCache(str(tmp_path / "cache"))
    kinds: list[str] = []
    storage.on_request = kinds.append
    version, path = publish(version_src(tmp_path, 3.0), base, storage=storage)
    assert (version, path) == (1, f"{base}/1")
    assert sorted(os.listdir(root + "/models/m")) == ["1"]  # staged, then renamed into place
    scan = VersionScanner(storage, base).scan()
    assert list(scan.complete) == [1] and scan.complete[1].published
    local = storage.local_dir(path)
    assert sorted(os.listdir(local)) == [COMPLETE_MARKER, "hotserve_manifest.json", "model.onnx"]
    assert "put" in kinds and "list" in kinds and "get" in kinds
