"""Repository layer: atomic publish, manifests, completeness and the settle rule."""

import json
import os
import subprocess
import sys

import pytest

from hotserve.errors import LoadError
from hotserve.examples import make_affine
from hotserve.repository import manifest
from hotserve.repository.publish import PublishError, publish
from hotserve.repository.scanner import VersionScanner
from hotserve.repository.storage import LocalStorage, StorageUnavailable


def test_publish_writes_manifest_and_numbers_versions(tmp_path):
    src = make_affine(str(tmp_path / "src" / "whatever.onnx"), 1.0)
    base = str(tmp_path / "models" / "m")
    v1, p1 = publish(src, base)
    v2, p2 = publish(src, base)
    assert (v1, v2) == (1, 2)
    assert sorted(os.listdir(p1)) == ["hotserve_manifest.json", "model.onnx"]
    doc = json.load(open(os.path.join(p1, manifest.MANIFEST_NAME)))
    assert doc["format"] == "hotserve-manifest/1"
    [entry] = doc["files"]
    assert entry["path"] == "model.onnx" and entry["size"] == os.path.getsize(os.path.join(p1, "model.onnx"))
    assert entry["sha256"] == manifest.sha256_file(os.path.join(p1, "model.onnx"))
    manifest.verify(p1)
    assert sorted(os.listdir(base)) == ["1", "2"]  # no staging directory left behind
    assert publish(src, base, 10)[0] == 10 and publish(src, base)[0] == 11


def test_publish_refuses_existing_version_and_missing_source(tmp_path):
    src = make_affine(str(tmp_path / "src" / "model.onnx"), 1.0)
    base = str(tmp_path / "m")
    publish(src, base, 3)
    with pytest.raises(PublishError, match="already exists"):
        publish(src, base, 3)
    with pytest.raises(PublishError, match="no such file"):
        publish(str(tmp_path / "nope"), base)
    assert sorted(os.listdir(base)) == ["3"]


def test_publish_directory_with_nested_files(tmp_path):
    src = tmp_path / "src"
    (src / "assets").mkdir(parents=True)
    make_affine(str(src / "model.onnx"), 1.0)
    (src / "assets" / "vocab.txt").write_text("a\nb\n")
    _, path = publish(str(src), str(tmp_path / "m"))
    files = {e["path"] for e in json.load(open(os.path.join(path, manifest.MANIFEST_NAME)))["files"]}
    assert files == {"model.onnx", os.path.join("assets", "vocab.txt")}
    manifest.verify(path)


def test_verify_detects_corruption_and_missing_files(tmp_path):
    src = make_affine(str(tmp_path / "src" / "model.onnx"), 1.0)
    _, path = publish(src, str(tmp_path / "m"))
    model = os.path.join(path, "model.onnx")
    data = bytearray(open(model, "rb").read())
    data[0] ^= 1
    open(model, "wb").write(bytes(data))
    with pytest.raises(LoadError, match="sha256"):
        manifest.verify(path)
    open(model, "ab").write(b"x")
    with pytest.raises(LoadError, match="size"):
        manifest.verify(path)
    os.remove(model)
    with pytest.raises(LoadError, match="does not hold it"):
        manifest.verify(path)


def test_scanner_settle_rule_for_hand_copied_directories(tmp_path):
    base = tmp_path / "m"
    (base / "1").mkdir(parents=True)
    (base / "1" / "model.onnx").write_bytes(b"part")
    (base / "notes").mkdir()
    (base / ".staging-2-abc").mkdir()
    sc = VersionScanner(LocalStorage(), str(base), settle_seconds=1.0)
    r = sc.scan(now=100.0)
    assert r.complete == {} and "settling" in r.pending[1] and r.next_check_in == pytest.approx(1.0)
    assert sc.scan(now=100.9).complete == {}
    # A change restarts the clock.
    (base / "1" / "model.onnx").write_bytes(b"part and more")
    assert sc.scan(now=101.5).complete == {}
    assert sc.scan(now=102.4).complete == {}
    r = sc.scan(now=102.6)
    assert list(r.complete) == [1] and not r.complete[1].published


def test_scanner_published_versions_are_complete_at_once(tmp_path):
    src = make_affine(str(tmp_path / "src" / "model.onnx"), 1.0)
    base = str(tmp_path / "m")
    publish(src, base)
    os.makedirs(os.path.join(base, "2"))  # empty: never complete
    r = VersionScanner(LocalStorage(), base, settle_seconds=60).scan(now=0.0)
    assert list(r.complete) == [1] and r.complete[1].published
    assert r.pending[2] == "empty directory"


def test_scanner_manifest_whose_files_are_still_arriving_is_not_complete(tmp_path):
    src = make_affine(str(tmp_path / "src" / "model.onnx"), 1.0)
    _, path = publish(src, str(tmp_path / "pub"))
    base = tmp_path / "m"
    (base / "1").mkdir(parents=True)
    # A hand copy that wrote the manifest first and half the model so far.
    (base / "1" / manifest.MANIFEST_NAME).write_bytes(open(os.path.join(path, manifest.MANIFEST_NAME), "rb").read())
    (base / "1" / "model.onnx").write_bytes(open(os.path.join(path, "model.onnx"), "rb").read()[:10])
    sc = VersionScanner(LocalStorage(), str(base), settle_seconds=5)
    assert sc.scan(now=0.0).complete == {}


def test_scanner_reports_missing_base_path(tmp_path):
    with pytest.raises(StorageUnavailable):
        VersionScanner(LocalStorage(), str(tmp_path / "absent")).scan()


def test_versions_command(tmp_path):
    src = make_affine(str(tmp_path / "src" / "model.onnx"), 1.0)
    base = str(tmp_path / "m")
    publish(src, base)
    os.makedirs(os.path.join(base, "2"))
    out = subprocess.run([sys.executable, "-m", "hotserve", "versions", base, "--settle_seconds", "0", "--verify"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "published (manifest), sha256 verified" in lines[1] and lines[1].split()[:2] == ["1", "yes"]
    assert lines[2].split()[:2] == ["2", "no"] and "empty directory" in lines[2]


def test_written_files_take_the_umask_mode_not_mkstemps(tmp_path):
    """A repository published by one user is read by a server running as another: manifests
    and delta files get the mode a plain open() gives (0644 under umask 022), not 0600."""
    old = os.umask(0o022)
    try:
        base = str(tmp_path / "m")
        publish(make_affine(str(tmp_path / "src" / "model.onnx"), 1.0), base, 1)
        storage = LocalStorage()
        storage.write_bytes(str(tmp_path / "plain"), b"x")
        assert storage.create_new(str(tmp_path / "new"), b"y")
    finally:
        os.umask(old)
    for path in (os.path.join(base, "1", manifest.MANIFEST_NAME), str(tmp_path / "plain"), str(tmp_path / "new")):
        assert os.stat(path).st_mode & 0o777 == 0o644, path
