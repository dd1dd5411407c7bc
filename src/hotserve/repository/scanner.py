"""Version discovery: which numeric version directories under a base path are complete.

A version is complete when its manifest lists files that are all present with their sizes
(published atomically), or, for a directory copied in by hand, when its files have not
changed for `settle_seconds` and no upload below it is still running (an S3 multipart upload
is not listed until it completes, so an unchanged listing alone does not prove a hand copy is
done). Anything else is pending and is never handed to a loader.

Cost per scan: on stores with a tree listing (S3, GCS) one listing of the base path gives every
version, its files and the entries beside them (`top_level`: the routing state's); manifests
are read only when their size, mtime or ETag changed. Elsewhere the base path is listed and
each version directory walked (free on local disks). On a tree-listing store an empty base
path is reported as unavailable, never as "no versions": on object storage a missing prefix
and an emptied one look the same, and a hiccup must not unload what serves.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from hotserve.repository import manifest
from hotserve.repository.storage import FileStat, Storage, StorageUnavailable

log = logging.getLogger("hotserve.repository")

# Written first by a publish on a store without rename, removed after the manifest: a version
# holding it and no matching manifest is being uploaded and never settles.
PUBLISHING_MARKER = ".hotserve_publishing"

# (relpath, size, mtime_ns) per file, plus the ETag where the store has one: object stores keep
# mtimes to the second, so a same-size re-upload within a second changes only the ETag.
Fingerprint = tuple[tuple, ...]


@dataclass(frozen=True)
class VersionInfo:
    version: int
    path: str
    fingerprint: Fingerprint
    published: bool  # carries a manifest whose sizes match

    @property
    def size_bytes(self) -> int:
        return sum(entry[1] for entry in self.fingerprint)


@dataclass
class ScanResult:
    complete: dict[int, VersionInfo]
    pending: dict[int, str] = field(default_factory=dict)  # version -> why it is not complete
    next_check_in: float | None = None  # a settling version may be complete after this long

    def key(self) -> tuple:
        return tuple(sorted((v, i.fingerprint) for v, i in self.complete.items()))


def list_version_numbers(storage: Storage, base_path: str) -> list[int]:
    return sorted(int(name) for name, is_dir in storage.list_entries(base_path) if is_dir and name.isdigit())


def _fingerprint(files: list[FileStat]) -> Fingerprint:
    return tuple((f.relpath, f.size, f.mtime_ns, f.etag) if f.etag else (f.relpath, f.size, f.mtime_ns) for f in files)


class VersionScanner:
    def __init__(self, storage: Storage, base_path: str, settle_seconds: float = 1.0, model: str = "") -> None:
        self.storage = storage
        self.base_path = base_path
        self.settle_seconds = settle_seconds
        self.model = model
        self._seen_since: dict[int, tuple[tuple, float]] = {}
        self._ignored_names: set[str] = set()
        self._manifests: dict[str, tuple[tuple, dict]] = {}
        # Hand copies found settled (with their fingerprint), so the in-progress-upload check
        # runs once per settled listing, not every poll.
        self._settled: dict[int, tuple] = {}
        # Files directly under the base path as the last tree listing saw them (None: this store
        # is walked, not tree-listed); the routing store reads its state file only when its
        # entry here changed.
        self.top_level: dict[str, FileStat] | None = None

    def scan(self, now: float | None = None) -> ScanResult:
        """Raises StorageUnavailable when the base path itself cannot be listed."""
        now = time.monotonic() if now is None else now
        if self.storage.tree_listing:
            return self._scan_tree(now)
        entries = self.storage.list_entries(self.base_path)
        result = ScanResult(complete={})
        present: set[int] = set()
        for name, is_dir in entries:
            if not name.isdigit() or not is_dir:
                if not name.startswith(".") and name not in self._ignored_names:
                    self._ignored_names.add(name)
                    log.info("model %s: ignoring %s in %s (not a numeric version directory)", self.model, name, self.base_path)
                continue
            version = int(name)
            present.add(version)
            self._classify(version, self.storage.join(self.base_path, name), now, result)
        self._forget_gone(present)
        return result

    def _scan_tree(self, now: float) -> ScanResult:
        """One listing of the whole base path (one request per 1000 objects)."""
        files = self.storage.stat_files(self.base_path)
        if not files:
            raise StorageUnavailable(f"nothing listed under {self.base_path} (missing, not readable with these "
                                     "credentials, or emptied); served versions are kept")
        top: dict[str, FileStat] = {}
        by_dir: dict[str, list[FileStat]] = {}
        for f in files:
            head, sep, rest = f.relpath.partition("/")
            if sep:
                by_dir.setdefault(head, []).append(FileStat(rest, f.size, f.mtime_ns, f.etag))
            else:
                top[head] = f
        self.top_level = top
        result = ScanResult(complete={})
        present: set[int] = set()
        for name, vfiles in by_dir.items():
            if not name.isdigit():
                self._ignore(name)
                continue
            version = int(name)
            present.add(version)
            self._judge(version, self.storage.join(self.base_path, name), vfiles, now, result)
        for name in top:
            self._ignore(name)
        self._forget_gone(present)
        return result

    def _ignore(self, name: str) -> None:
        if not name.startswith(".") and name not in self._ignored_names:
            self._ignored_names.add(name)
            log.info("model %s: ignoring %s in %s (not a numeric version directory)", self.model, name, self.base_path)

    def _forget_gone(self, present: set[int]) -> None:
        for gone in set(self._seen_since) - present:
            del self._seen_since[gone]
        for gone in set(self._settled) - present:
            del self._settled[gone]
        live = {self.storage.join(self.base_path, str(v)) for v in present}
        for gone in set(self._manifests) - live:
            del self._manifests[gone]

    def _manifest(self, path: str, mstat: FileStat) -> dict:
        """The parsed manifest, re-read only when its size or mtime changed: a scan runs every
        poll interval and must stay cheap for repositories with many versions."""
        key = (path, mstat.size, mstat.mtime_ns, mstat.etag)
        cached = self._manifests.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        doc = manifest.parse_manifest(self.storage.read_bytes(self.storage.join(path, manifest.MANIFEST_NAME)), path)
        self._manifests[path] = (key, doc)
        return doc

    def _classify(self, version: int, path: str, now: float, result: ScanResult) -> None:
        try:
            files = self.storage.stat_files(path)
        except (OSError, StorageUnavailable):
            result.pending[version] = "directory vanished while scanning"
            return
        self._judge(version, path, files, now, result)

    def _judge(self, version: int, path: str, files: list[FileStat], now: float, result: ScanResult) -> None:
        fp = _fingerprint(files)
        if not files:
            result.pending[version] = "empty directory"
            return
        mstat = next((f for f in files if f.relpath == manifest.MANIFEST_NAME), None)
        if mstat is not None:
            try:
                doc = self._manifest(path, mstat)
            except StorageUnavailable:
                raise  # the store failed mid-scan: the whole scan failed, nothing served changes
            except Exception:  # a manifest mid-write, deleted or corrupt: fall through to the settle rule
                doc = None
            if doc is not None and manifest.sizes_match(doc, files):
                result.complete[version] = VersionInfo(version, path, fp, published=True)
                return
        if any(f.relpath == PUBLISHING_MARKER for f in files):
            result.pending[version] = "being published (upload in progress)"
            return
        # Hand-copied (or manifest not matching yet): complete only once unchanged for the settle time.
        # ETags count as change too: object stores keep mtimes to the second.
        listed = tuple((f.relpath, f.size, f.mtime_ns, f.etag) for f in files)
        seen = self._seen_since.get(version)
        if seen is None or seen[0] != listed:
            self._seen_since[version] = (listed, now)
            seen = self._seen_since[version]
        waited = now - seen[1]
        if waited >= self.settle_seconds and self._settled.get(version) != listed:
            try:
                uploading = self.storage.uploads_in_progress(path)
            except (OSError, StorageUnavailable):
                uploading = True  # cannot tell: not settled yet
            if uploading:
                self._seen_since[version] = (listed, now)  # the settle time starts again once it is listed
                result.pending[version] = "an upload below it is still in progress"
                result.next_check_in = self.settle_seconds if result.next_check_in is None else min(
                    result.next_check_in, self.settle_seconds)
                return
            self._settled[version] = listed
        if waited >= self.settle_seconds:
            result.complete[version] = VersionInfo(version, path, fp, published=False)
        else:
            remaining = self.settle_seconds - waited
            result.pending[version] = f"settling: unchanged for {waited:.2f}s of {self.settle_seconds:.2f}s"
            result.next_check_in = remaining if result.next_check_in is None else min(result.next_check_in, remaining)
