"""Version manifests: the list of files, sizes and sha256 digests, written last on publish.

A manifest makes a version's completeness checkable on any store: the scanner compares sizes
cheaply (one listing), the loader verifies digests of its local copy before handing the
directory to a runtime. Besides `files` a manifest may carry `lineage` (where the version came
from: a learner, a compression pass) and `gates` (extra checks the version asks for); readers
ignore keys they do not know.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Iterable

from hotserve.errors import LoadError
from hotserve.repository.storage import FileStat, LocalStorage, Storage, StorageUnavailable

MANIFEST_NAME = "hotserve_manifest.json"
FORMAT = "hotserve-manifest/1"
_CHUNK = 1 << 20


def sha256_stream(stream) -> str:
    h = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def build_manifest(version_dir: str, files: Iterable[FileStat], **extra) -> dict:
    """The manifest of local files under version_dir (hashed here, before any upload)."""
    entries = [
        {"path": f.relpath, "size": f.size, "sha256": sha256_file(os.path.join(version_dir, f.relpath))}
        for f in files
        if f.relpath != MANIFEST_NAME
    ]
    return {"format": FORMAT, "created_unix": time.time(), "files": entries, **extra}


def encode(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=1).encode()


def parse_manifest(raw: bytes, where: str) -> dict:
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        for entry in files:
            entry["path"], entry["size"], entry["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"{where}: malformed manifest ({exc}); expected JSON with a 'files' list of path/size/sha256") from exc
    if manifest.get("format") != FORMAT:
        raise LoadError(f"{where}: manifest format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def sizes_match(manifest: dict, files: Iterable[FileStat]) -> bool:
    """True when every file the manifest lists is present with its size (cheap completeness check)."""
    present = {f.relpath: f.size for f in files}
    return all(present.get(e["path"]) == e["size"] for e in manifest["files"])


def read(version_dir: str, storage: Storage | None = None) -> dict:
    """The parsed manifest of a version; LoadError if absent or malformed."""
    storage = storage or LocalStorage()
    mpath = storage.join(version_dir, MANIFEST_NAME)
    try:
        raw = storage.read_bytes(mpath)
    except FileNotFoundError:
        raise LoadError(f"cannot read manifest {mpath}: no such file") from None
    except (OSError, StorageUnavailable) as exc:
        raise LoadError(f"cannot read manifest {mpath}: {getattr(exc, 'strerror', None) or exc}") from exc
    return parse_manifest(raw, mpath)


def verify(version_dir: str, storage: Storage | None = None) -> dict:
    """Raise LoadError unless every listed file is present with the listed size and digest;
    returns the manifest."""
    storage = storage or LocalStorage()
    doc = read(version_dir, storage)
    try:
        sizes = {f.relpath: f.size for f in storage.stat_files(version_dir)}
    except (OSError, StorageUnavailable) as exc:
        raise LoadError(f"cannot list {version_dir}: {exc}") from exc
    for entry in doc["files"]:
        size = sizes.get(entry["path"])
        if size is None:
            raise LoadError(f"manifest lists {entry['path']} but {version_dir} does not hold it")
        if size != entry["size"]:
            raise LoadError(f"{entry['path']}: size {size} bytes, manifest says {entry['size']}")
        try:
            with storage.open_read(storage.join(version_dir, entry["path"])) as f:
                digest = sha256_stream(f)
        except (OSError, StorageUnavailable) as exc:
            raise LoadError(f"{entry['path']}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
        if digest != entry["sha256"]:
            raise LoadError(f"{entry['path']}: sha256 {digest[:16]}..., manifest says {entry['sha256'][:16]}... (file corrupt or changed after publish)")
    return doc
