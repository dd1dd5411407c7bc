"""Version discovery: which numeric version directories under a base path are complete.

A version is complete when its manifest lists files that are all present with their sizes
(published atomically), or, for a directory copied in by hand, when its files have not
changed for `settle_seconds`. Anything else is pending and is never handed to a loader.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from hotserve.repository import manifest
from hotserve.repository.storage import FileStat, Storage, StorageUnavailable

log = logging.getLogger("hotserve.repository")

# A publish's staging directory untouched this long was left by a publisher that died.
STALE_STAGING_SECONDS = 3600.0
# Unchanged published versions are re-listed in full this often (cheap checks in between).
FULL_RESCAN_SECONDS = 30.0
STAGING_PREFIX = ".staging-"

# Written first by a publish on a store without rename, removed after the manifest: a version
# holding it and no matching manifest is being uploaded and never settles.
PUBLISHING_MARKER = ".hotserve_publishing"

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class VersionInfo:
    version: int
    path: str
    fingerprint: Fingerprint
    published: bool  # carries a manifest whose sizes match

    @property
    def size_bytes(self) -> int:
        return sum(size for _, size, _ in self.fingerprint)


@dataclass
class ScanResult:
    complete: dict[int, VersionInfo]
    pending: dict[int, str] = field(default_factory=dict)  # version -> why it is not complete
    next_check_in: float | None = None  # a settling version may be complete after this long
    # version -> why its directory cannot be read (permissions, a symlink loop): never loaded,
    # and a loaded version that becomes unreadable keeps serving its loaded copy.
    unreadable: dict[int, str] = field(default_factory=dict)

    def key(self) -> tuple:
        return (tuple(sorted((v, i.fingerprint) for v, i in self.complete.items())),
                tuple(sorted(self.unreadable.items())))


def list_version_numbers(storage: Storage, base_path: str) -> list[int]:
    return sorted(int(name) for name, is_dir in storage.list_entries(base_path) if is_dir and name.isdigit())


def _fingerprint(files: list[FileStat]) -> Fingerprint:
    return tuple((f.relpath, f.size, f.mtime_ns) for f in files)


class VersionScanner:
    def __init__(self, storage: Storage, base_path: str, settle_seconds: float = 1.0, model: str = "") -> None:
        self.storage = storage
        self.base_path = base_path
        self.settle_seconds = settle_seconds
        self.model = model
        self._seen_since: dict[int, tuple[Fingerprint, float]] = {}
        self._ignored_names: set[str] = set()
        self._manifests: dict[str, tuple[tuple, dict]] = {}
        # version -> (directory stamp, manifest stamp, info, when fully listed): lets a scan skip
        # listing every file of a published version whose directory and manifest are unchanged.
        self._stable: dict[int, tuple[tuple, tuple, VersionInfo, float]] = {}
        self._next_staging_check = 0.0
        self._dirty: set[int] | None = None

    def scan(self, now: float | None = None, dirty: set[int] | None = None) -> ScanResult:
        """Raises StorageUnavailable when the base path itself cannot be listed.

        `dirty`: the versions a change notification (inotify) named since the last scan; other
        published versions listed within FULL_RESCAN_SECONDS are taken as they were, with no
        system call. None (polling): each published version costs two stats unless changed."""
        self._dirty = dirty
        now = time.monotonic() if now is None else now
        entries = self.storage.list_entries(self.base_path)
        result = ScanResult(complete={})
        present: set[int] = set()
        for name, is_dir in entries:
            if name.startswith(STAGING_PREFIX):
                if now >= self._next_staging_check:
                    self._remove_if_stale(name)
                continue
            if not name.isdigit() or not is_dir:
                if not name.startswith(".") and name not in self._ignored_names:
                    self._ignored_names.add(name)
                    log.info("model %s: ignoring %s in %s (not a numeric version directory)", self.model, name, self.base_path)
                continue
            version = int(name)
            present.add(version)
            self._classify(version, self.storage.join(self.base_path, name), now, result)
        if now >= self._next_staging_check:
            self._next_staging_check = now + 60.0
        for gone in set(self._seen_since) - present:
            del self._seen_since[gone]
        for gone in set(self._stable) - present:
            del self._stable[gone]
        live = {self.storage.join(self.base_path, str(v)) for v in present}
        for gone in set(self._manifests) - live:
            del self._manifests[gone]
        return result

    def _manifest(self, path: str, mstat: FileStat) -> dict:
        """The parsed manifest, re-read only when its size or mtime changed: a scan runs every
        poll interval and must stay cheap for repositories with many versions."""
        key = (path, mstat.size, mstat.mtime_ns)
        cached = self._manifests.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        doc = manifest.parse_manifest(self.storage.read_bytes(self.storage.join(path, manifest.MANIFEST_NAME)), path)
        self._manifests[path] = (key, doc)
        return doc

    def _remove_if_stale(self, name: str) -> None:
        """A staging directory nothing wrote to for STALE_STAGING_SECONDS: its publisher died."""
        path = self.storage.join(self.base_path, name)
        try:
            files = self.storage.stat_files(path)
            top = self.storage.stat(path)
        except (OSError, StorageUnavailable):
            return
        newest = max([f.mtime_ns for f in files] + [top.mtime_ns if top else 0])
        if time.time() - newest / 1e9 < STALE_STAGING_SECONDS:
            return
        self.storage.remove_tree(path)
        log.warning("model %s: removed %s, a publish abandoned %.0f minutes ago (its publisher stopped before commit)",
                    self.model, path, (time.time() - newest / 1e9) / 60, extra={"event": "staging_removed", "model": self.model})

    def _cheap_unchanged(self, version: int, path: str, now: float) -> VersionInfo | None:
        """The cached info of a published version whose directory and manifest did not change
        since its last full listing (checked with two stats, not one per file)."""
        cached = self._stable.get(version)
        if cached is None or now - cached[3] >= FULL_RESCAN_SECONDS:
            return None
        if self._dirty is not None:
            return None if version in self._dirty else cached[2]
        try:
            dstat = self.storage.stat(path)
            mstat = self.storage.stat(self.storage.join(path, manifest.MANIFEST_NAME))
        except (OSError, StorageUnavailable):
            return None
        if dstat is None or mstat is None:
            return None
        if (dstat.mtime_ns, dstat.size) != cached[0] or (mstat.mtime_ns, mstat.size) != cached[1]:
            return None
        return cached[2]

    def _classify(self, version: int, path: str, now: float, result: ScanResult) -> None:
        info = self._cheap_unchanged(version, path, now)
        if info is not None:
            result.complete[version] = info
            return
        self._stable.pop(version, None)  # re-cached below only if still a complete published version
        try:
            files = self.storage.stat_files(path)
        except FileNotFoundError:
            result.pending[version] = "directory vanished while scanning"
            return
        except (OSError, StorageUnavailable) as exc:
            if not self.storage.exists(path):
                result.pending[version] = "directory vanished while scanning"
            else:
                result.unreadable[version] = f"cannot read version directory: {exc}"
            return
        fp = _fingerprint(files)
        if not files:
            result.pending[version] = "empty directory"
            return
        mstat = next((f for f in files if f.relpath == manifest.MANIFEST_NAME), None)
        if mstat is not None:
            try:
                if manifest.sizes_match(self._manifest(path, mstat), files):
                    info = VersionInfo(version, path, fp, published=True)
                    result.complete[version] = info
                    dstat = self.storage.stat(path)
                    if dstat is not None:
                        self._stable[version] = ((dstat.mtime_ns, dstat.size), (mstat.mtime_ns, mstat.size), info, now)
                    return
            except Exception:  # a manifest mid-write or corrupt: fall through to the settle rule
                pass
        if any(f.relpath == PUBLISHING_MARKER for f in files):
            result.pending[version] = "being published (upload in progress)"
            return
        # Hand-copied (or manifest not matching yet): complete only once unchanged for the settle time.
        seen = self._seen_since.get(version)
        if seen is None or seen[0] != fp:
            self._seen_since[version] = (fp, now)
            seen = self._seen_since[version]
        waited = now - seen[1]
        if waited >= self.settle_seconds:
            result.complete[version] = VersionInfo(version, path, fp, published=False)
        else:
            remaining = self.settle_seconds - waited
            result.pending[version] = f"settling: unchanged for {waited:.2f}s of {self.settle_seconds:.2f}s"
            result.next_check_in = remaining if result.next_check_in is None else min(result.next_check_in, remaining)
