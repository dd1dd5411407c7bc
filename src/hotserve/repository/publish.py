"""Publish = stage + commit, on any store.

stage() copies the model into the repository where no server will take it for a version yet,
and hashes it; commit() writes the manifest last. On stores with an atomic rename (local
disks) staging is a hidden directory beside the target and commit renames it into place after
the manifest, so a watcher sees nothing or a complete version. On object stores (no rename)
stage uploads straight into the version's place behind an in-progress marker, and the manifest,
written last, is what makes the version complete (the marker goes after it); a listing never
shows a version as complete before every file it lists is there with its size.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from hotserve.repository import manifest
from hotserve.repository.scanner import PUBLISHING_MARKER, STAGING_PREFIX, list_version_numbers
from hotserve.repository.storage import FileStat, LocalStorage, Storage, normalize_base_path, storage_for

# A bare model file is renamed to the file name its runtime looks for.
_CANONICAL_NAMES = {".onnx": "model.onnx", ".py": "model.py"}


class PublishError(Exception):
    pass


@dataclass
class Staged:
    """A version copied into the store but not yet visible as complete."""

    storage: Storage
    base_path: str
    version: int
    path: str  # where the files are: a staging directory, or the target itself (no rename)
    target: str
    manifest: dict


def _local_files(src: str) -> list[tuple[str, str]]:
    """(local file, relpath in the version) for a model file or a version directory."""
    if os.path.isdir(src):
        files = LocalStorage().stat_files(src)
        # A stale manifest from elsewhere would describe other bytes; ours is written fresh.
        return [(os.path.join(src, f.relpath), f.relpath) for f in files if f.relpath != manifest.MANIFEST_NAME]
    if os.path.isfile(src):
        ext = os.path.splitext(src)[1].lower()
        return [(src, _CANONICAL_NAMES.get(ext, os.path.basename(src)))]
    raise PublishError(f"{src}: no such file or directory")


def stage(src: str, base_path: str, version: int | None = None, storage: Storage | None = None,
          **manifest_extra) -> Staged:
    """First half of a publish: copy src (a model file or a version directory) into the store
    and hash it. Nothing is visible to a server as a complete version until commit(). The
    version defaults to newest + 1. manifest_extra lands in the manifest (lineage, gates)."""
    base_path = normalize_base_path(base_path)
    storage = storage or storage_for(base_path)
    files = _local_files(src)
    storage.makedirs(base_path)
    if version is None:
        existing = list_version_numbers(storage, base_path)
        version = (max(existing) + 1) if existing else 1
    if version < 0:
        raise PublishError(f"version must be a non-negative integer, got {version}")
    target = storage.join(base_path, str(version))
    if storage.exists(target):
        raise PublishError(f"version {version} already exists at {target}; versions are immutable, publish a new one")
    if storage.atomic_rename:
        path = storage.join(base_path, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    else:
        path = target
    storage.makedirs(path)
    try:
        if not storage.atomic_rename:
            storage.write_bytes(storage.join(path, PUBLISHING_MARKER), b"")
        stats = []
        for local, rel in files:
            storage.put_file(local, storage.join(path, rel))
            st = os.stat(local)
            stats.append((local, FileStat(rel, st.st_size, st.st_mtime_ns)))
        doc = manifest.build_manifest("", [], **manifest_extra)
        doc["files"] = [{"path": f.relpath, "size": f.size, "sha256": manifest.sha256_file(local)} for local, f in stats]
    except BaseException:
        storage.remove_tree(path)
        raise
    return Staged(storage, base_path, version, path, target, doc)


def commit(staged: Staged) -> str:
    """Second half: write the manifest last, then (where the store can) rename into place.
    Returns the version's path. On failure the staged files are removed."""
    storage = staged.storage
    try:
        storage.write_bytes(storage.join(staged.path, manifest.MANIFEST_NAME), manifest.encode(staged.manifest))
        if storage.atomic_rename:
            if storage.exists(staged.target):
                raise PublishError(f"version {staged.version} appeared at {staged.target} while publishing")
            storage.rename(staged.path, staged.target)
        else:
            storage.remove_tree(storage.join(staged.path, PUBLISHING_MARKER))
    except BaseException:
        storage.remove_tree(staged.path)
        raise
    return staged.target


def publish(src: str, base_path: str, version: int | None = None, storage: Storage | None = None,
            **manifest_extra) -> tuple[int, str]:
    """Publish src (a model file or directory) as a new version under base_path: stage, then
    commit. Returns (version, final_path)."""
    staged = stage(src, base_path, version, storage, **manifest_extra)
    return staged.version, commit(staged)
