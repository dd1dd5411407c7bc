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
from hotserve.repository.deltas import DELTAS_DIR, commit_seq
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

# (relpath, size, mtime_ns) per file, plus the ETag where the store has one: object stores keep
# mtimes to the second, so a same-size re-upload within a second changes only the ETag.
Fingerprint = tuple[tuple, ...]


@dataclass(frozen=True)
class VersionInfo:
    version: int
    path: str
    fingerprint: Fingerprint
    published: bool  # carries a manifest whose sizes match
    # The newest committed parameter delta under <version>/deltas/ (0: none). Deltas are not part
    # of the fingerprint: a delta is a new revision of a loaded version, not a new version.
    deltas: int = 0

    @property
    def size_bytes(self) -> int:
        return sum(entry[1] for entry in self.fingerprint)


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

    def delta_key(self) -> tuple:
        """Changes when a version's delta log got a new commit."""
        return tuple(sorted((v, i.deltas) for v, i in self.complete.items() if i.deltas))


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
        # version -> (directory stamp, manifest stamp, info, when fully listed, deltas/ stamp or
        # None): lets a scan skip listing every file of a published version whose directory and
        # manifest (and delta log, where it has one) are unchanged.
        self._stable: dict[int, tuple[tuple, tuple, VersionInfo, float, tuple | None]] = {}
        self._next_staging_check = 0.0
        self._dirty: set[int] | None = None

    def scan(self, now: float | None = None, dirty: set[int] | None = None) -> ScanResult:
        """Raises StorageUnavailable when the base path itself cannot be listed.

        `dirty` (walked stores): the versions a change notification (inotify) named since the
        last scan; other published versions listed within FULL_RESCAN_SECONDS are taken as they
        were, with no system call. None (polling): each published version costs two stats
        unless changed."""
        now = time.monotonic() if now is None else now
        self._dirty = dirty
        if self.storage.tree_listing:
            return self._scan_tree(now)
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

    def invalidate(self) -> None:
        """Forget what was cached about versions (after a failed scan, changes may have been missed)."""
        self._stable.clear()

    def _ignore(self, name: str) -> None:
        if not name.startswith(".") and name not in self._ignored_names:
            self._ignored_names.add(name)
            log.info("model %s: ignoring %s in %s (not a numeric version directory)", self.model, name, self.base_path)

    def _forget_gone(self, present: set[int]) -> None:
        for gone in set(self._seen_since) - present:
            del self._seen_since[gone]
        for gone in set(self._settled) - present:
            del self._settled[gone]
        for gone in set(self._stable) - present:
            del self._stable[gone]
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
        since its last full listing (no system call when inotify says nothing changed; two
        stats, not one per file, when polling)."""
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
        if cached[4] is not None:  # a third stat, only for versions with a delta log
            try:
                lstat = self.storage.stat(self.storage.join(path, DELTAS_DIR))
            except (OSError, StorageUnavailable):
                return None
            if lstat is None or (lstat.mtime_ns, lstat.size) != cached[4]:
                return None
        return cached[2]

    def _classify(self, version: int, path: str, now: float, result: ScanResult) -> None:
        """A walked store's version: its cached state if unchanged, else a listing of its files."""
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
        self._judge(version, path, files, now, result)
        info = result.complete.get(version)
        if info is not None and info.published and not self.storage.tree_listing:
            mstat = next(f for f in files if f.relpath == manifest.MANIFEST_NAME)
            dstat = self.storage.stat(path)
            lstamp = None
            if info.deltas:
                lstat = self.storage.stat(self.storage.join(path, DELTAS_DIR))
                lstamp = (lstat.mtime_ns, lstat.size) if lstat is not None else None
            if dstat is not None and (lstamp is not None or not info.deltas):
                self._stable[version] = ((dstat.mtime_ns, dstat.size), (mstat.mtime_ns, mstat.size), info, now, lstamp)

    def _judge(self, version: int, path: str, files: list[FileStat], now: float, result: ScanResult) -> None:
        prefix = DELTAS_DIR + "/"
        seqs = [commit_seq(f.relpath[len(prefix):]) for f in files if f.relpath.startswith(prefix)]
        if len(seqs) or any(f.relpath.startswith(prefix) for f in files):
            files = [f for f in files if not f.relpath.startswith(prefix)]
        deltas = max((q for q in seqs if q is not None), default=0)
        self._judge_files(version, path, files, now, result)
        info = result.complete.get(version)
        if info is not None and deltas:
            result.complete[version] = VersionInfo(info.version, info.path, info.fingerprint, info.published, deltas)

    def _judge_files(self, version: int, path: str, files: list[FileStat], now: float, result: ScanResult) -> None:
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
