"""Version manifests: the list of files, sizes and sha256 digests, written last on publish.

A manifest makes a version's completeness checkable: the scanner compares sizes cheaply,
the loader verifies digests before handing the directory to a runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Iterable

from hotserve.errors import LoadError
from hotserve.repository.storage import FileStat

MANIFEST_NAME = "hotserve_manifest.json"
FORMAT = "hotserve-manifest/1"
_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(version_dir: str, files: Iterable[FileStat]) -> dict:
    entries = [
        {"path": f.relpath, "size": f.size, "sha256": sha256_file(os.path.join(version_dir, f.relpath))}
        for f in files
        if f.relpath != MANIFEST_NAME
    ]
    return {"format": FORMAT, "created_unix": time.time(), "files": entries}


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


def verify(version_dir: str) -> None:
    """Raise LoadError unless every listed file is present with the listed size and digest."""
    mpath = os.path.join(version_dir, MANIFEST_NAME)
    try:
        with open(mpath, "rb") as f:
            manifest = parse_manifest(f.read(), mpath)
    except OSError as exc:
        raise LoadError(f"cannot read manifest {mpath}: {exc.strerror}") from exc
    for entry in manifest["files"]:
        path = os.path.join(version_dir, entry["path"])
        try:
            size = os.path.getsize(path)
        except OSError:
            raise LoadError(f"manifest lists {entry['path']} but {version_dir} does not hold it") from None
        if size != entry["size"]:
            raise LoadError(f"{entry['path']}: size {size} bytes, manifest says {entry['size']}")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise LoadError(f"{entry['path']}: sha256 {digest[:16]}..., manifest says {entry['sha256'][:16]}... (file corrupt or changed after publish)")
