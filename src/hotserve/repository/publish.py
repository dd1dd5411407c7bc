"""Atomic publish: copy into a staging directory beside the target, write the manifest last,
fsync, then rename into place, so a watcher never sees a half-copied version."""

from __future__ import annotations

import json
import os
import shutil
import uuid

from hotserve.repository import manifest
from hotserve.repository.scanner import list_version_numbers
from hotserve.repository.storage import LocalStorage

STAGING_PREFIX = ".staging-"

# A bare model file is renamed to the file name its runtime looks for.
_CANONICAL_NAMES = {".onnx": "model.onnx", ".py": "model.py"}


class PublishError(Exception):
    pass


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_into(src: str, staging: str) -> None:
    if os.path.isdir(src):
        shutil.copytree(src, staging, dirs_exist_ok=True)
        if os.path.exists(os.path.join(staging, manifest.MANIFEST_NAME)):
            # A stale manifest from elsewhere would describe other bytes; ours is written fresh.
            os.remove(os.path.join(staging, manifest.MANIFEST_NAME))
    elif os.path.isfile(src):
        ext = os.path.splitext(src)[1].lower()
        shutil.copy2(src, os.path.join(staging, _CANONICAL_NAMES.get(ext, os.path.basename(src))))
    else:
        raise PublishError(f"{src}: no such file or directory")


def stage(src: str, base_path: str, version: int | None = None) -> tuple[int, str]:
    """First half of a publish: copy src into a hidden staging directory beside the target
    (the scanner ignores it), write and fsync the manifest. Returns (version, staging_path);
    nothing is visible to a server until commit(). The version defaults to newest + 1."""
    os.makedirs(base_path, exist_ok=True)
    if version is None:
        existing = list_version_numbers(LocalStorage(), base_path)
        version = (max(existing) + 1) if existing else 1
    if version < 0:
        raise PublishError(f"version must be a non-negative integer, got {version}")
    target = os.path.join(base_path, str(version))
    if os.path.exists(target):
        raise PublishError(f"version {version} already exists at {target}; versions are immutable, publish a new one")
    staging = os.path.join(base_path, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    os.makedirs(staging)
    try:
        _copy_into(src, staging)
        files = LocalStorage().stat_files(staging)
        for f in files:
            _fsync_path(os.path.join(staging, f.relpath))
        data = json.dumps(manifest.build_manifest(staging, files), indent=1).encode()
        with open(os.path.join(staging, manifest.MANIFEST_NAME), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version, staging


def commit(staging: str, base_path: str, version: int) -> str:
    """Second half: rename the staged version into place (atomic) and fsync the base path.
    Returns the version's path. On failure the staging directory is removed."""
    target = os.path.join(base_path, str(version))
    try:
        if os.path.exists(target):
            raise PublishError(f"version {version} appeared at {target} while publishing")
        os.rename(staging, target)
        _fsync_path(base_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def publish(src: str, base_path: str, version: int | None = None) -> tuple[int, str]:
    """Publish src (a model file or directory) as a new version under base_path: stage, then
    commit. Returns (version, final_path)."""
    version, staging = stage(src, base_path, version)
    return version, commit(staging, base_path, version)
