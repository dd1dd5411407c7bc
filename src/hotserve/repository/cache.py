"""The local cache of remote versions: runtimes load from local disk, never from a bucket.

`fetch(store, path)` lists the version (one request), downloads every file into a partial
directory beside its cache entry, checks each file's size against the listing and, when the
version has a manifest, each file's sha256 against it, and only then renames the partial
directory into place. A version whose copy is incomplete or does not match is never handed
to a runtime: the download is retried with exponential backoff, and after the last attempt a
digest mismatch is a LoadError (the store's copy is corrupt: the version ends, and loads again
only once its files change) while a store that kept failing is StorageUnavailable (the loader
tries again later).

Entries are keyed by the version's path and its listing (sizes and ETags), so a version
re-uploaded under the same number is a new entry, and a restarted server reuses what it has.
Entries in use hold a shared flock, by this process or any other sharing the directory
(--num_workers); eviction skips them. Per model, the entries in use plus the `keep_unused`
most recently used others are kept; the rest are removed when a version is released.

Downloads are bounded (`max_downloads` at once per process) and start after a random delay of
up to `jitter_seconds`, so a fleet publishing at once does not stampede the store.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from typing import Protocol
from urllib.parse import quote

from hotserve.errors import LoadError
from hotserve.repository import manifest
from hotserve.repository.storage import FileStat, StorageUnavailable

log = logging.getLogger("hotserve.cache")

COMPLETE_MARKER = ".hotserve_cache_complete"
# Written by publish while uploading; never part of a version's files.
_SKIP = frozenset({".hotserve_publishing"})


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"hotserve-cache-{os.getuid()}")


class RemoteFiles(Protocol):
    """What the cache needs from a remote store."""

    def stat_files(self, path: str) -> list[FileStat]:
        ...

    def join(self, base: str, *parts: str) -> str:
        ...

    def download(self, path: str, local_path: str, size: int | None = None) -> None:
        """Copy one remote file (of `size` bytes, as listed) to local_path (created or replaced)."""


class _Corrupt(Exception):
    """The downloaded bytes do not match the manifest."""


class _Partial(Exception):
    """A downloaded file is missing or has the wrong size (an interrupted or changing transfer)."""


class VersionCache:
    def __init__(self, root: str | None = None, keep_unused: int = 2, max_downloads: int = 2,
                 jitter_seconds: float = 0.0, attempts: int = 3, backoff_seconds: float = 0.5) -> None:
        self.root = os.path.abspath(root or default_cache_dir())
        self.keep_unused = max(0, keep_unused)
        self.jitter_seconds = max(0.0, jitter_seconds)
        self.attempts = max(1, attempts)
        self.backoff_seconds = backoff_seconds
        self._downloads = threading.BoundedSemaphore(max(1, max_downloads))
        self._lock = threading.Lock()
        # path -> [lock fd, entry dir, references] for entries this process uses
        self._in_use: dict[str, list] = {}

    # -- where entries live ---------------------------------------------------------------
    def _version_dir(self, path: str) -> str:
        """root/<scheme>/<bucket>/<prefix...>/<version>: readable, one directory per version."""
        scheme, _, rest = path.partition("://")
        parts = [scheme] + [p for p in rest.split("/") if p]
        safe = [quote(p, safe="") for p in parts]
        if any(p in (".", "..") for p in safe):
            raise LoadError(f"{path}: cannot cache a path with '.' or '..' components")
        return os.path.join(self.root, *safe)

    @staticmethod
    def _key(files: list[FileStat]) -> str:
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relpath}\0{f.size}\0{f.etag or f.mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    # -- fetching -------------------------------------------------------------------------
    def fetch(self, store: RemoteFiles, path: str) -> str:
        """The local directory holding a verified copy of the version at path; it stays in use
        (never evicted) until release(path)."""
        with self._lock:
            held = self._in_use.get(path)
            if held is not None and os.path.isfile(os.path.join(held[1], COMPLETE_MARKER)):
                held[2] += 1
                return held[1]
        last: Exception | None = None
        jittered = False
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                delay = self.backoff_seconds * 2 ** (attempt - 2)
                log.warning("%s: download attempt %d of %d failed (%s); retrying in %.1fs", path, attempt - 1,
                            self.attempts, last, delay)
                time.sleep(delay)
            try:
                # A version's delta log is read through Storage by its keeper, not loaded from the copy.
                files = [f for f in store.stat_files(path) if f.relpath not in _SKIP and not f.relpath.startswith("deltas/")]
            except (StorageUnavailable, OSError) as exc:
                last = exc
                continue
            if not files:
                last = StorageUnavailable(f"{path}: no files listed")
                continue
            entry = os.path.join(self._version_dir(path), self._key(files))
            os.makedirs(os.path.dirname(entry), exist_ok=True)
            fd = os.open(entry + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                # Shared while in use (eviction, here or in a sibling process, skips it);
                # exclusive while downloading, so one process downloads and the others wait.
                fcntl.flock(fd, fcntl.LOCK_SH)
                if not self._valid(entry, files):
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    if not self._valid(entry, files):  # a sibling may have finished meanwhile
                        if not jittered and self.jitter_seconds:
                            jittered = True
                            time.sleep(random.uniform(0, self.jitter_seconds))
                        with self._downloads:
                            self._download(store, path, files, entry)
                    fcntl.flock(fd, fcntl.LOCK_SH)
            except (StorageUnavailable, OSError, _Partial, _Corrupt) as exc:
                os.close(fd)
                last = exc
                continue
            except BaseException:
                os.close(fd)
                raise
            with self._lock:
                old = self._in_use.get(path)
                if old is not None:  # a stale entry of the same path (re-uploaded version)
                    os.close(old[0])
                self._in_use[path] = [fd, entry, 1 + (old[2] if old else 0)]
            self._evict(os.path.dirname(os.path.dirname(entry)))
            return entry
        if isinstance(last, _Corrupt):
            raise LoadError(f"{path}: {last} (after {self.attempts} downloads: the store's copy does not match its "
                            "manifest)")
        raise StorageUnavailable(f"{path}: download failed after {self.attempts} attempt(s): {last}")

    @staticmethod
    def _valid(entry: str, files: list[FileStat]) -> bool:
        """A complete entry whose files still have the listed sizes (cheap: stats, no hashing; the
        manifest gate hashes the copy before any runtime reads it)."""
        if not os.path.isfile(os.path.join(entry, COMPLETE_MARKER)):
            return False
        try:
            return all(os.path.getsize(os.path.join(entry, f.relpath)) == f.size for f in files)
        except OSError:
            return False

    def _download(self, store: RemoteFiles, path: str, files: list[FileStat], entry: str) -> None:
        partial = f"{entry}.partial-{uuid.uuid4().hex[:8]}"
        try:
            for f in files:
                local = os.path.join(partial, *f.relpath.split("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                store.download(store.join(path, f.relpath), local, f.size)
                got = os.path.getsize(local)
                if got != f.size:
                    raise _Partial(f"{f.relpath}: downloaded {got} bytes, listed {f.size}")
            self._verify(partial, files)
            with open(os.path.join(partial, COMPLETE_MARKER), "w"):
                pass
            shutil.rmtree(entry, ignore_errors=True)  # an invalid leftover (we hold its lock)
            os.rename(partial, entry)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    @staticmethod
    def _verify(local: str, files: list[FileStat]) -> None:
        if not any(f.relpath == manifest.MANIFEST_NAME for f in files):
            return  # a hand copy: sizes (checked above) are all there is to check
        doc = manifest.read(local)  # LoadError if malformed: permanent, not worth a retry
        for e in doc["files"]:
            fpath = os.path.join(local, *e["path"].split("/"))
            if not os.path.isfile(fpath):
                raise _Corrupt(f"manifest lists {e['path']} but the store does not hold it")
            if os.path.getsize(fpath) != e["size"]:
                raise _Corrupt(f"{e['path']}: {os.path.getsize(fpath)} bytes, manifest says {e['size']}")
            digest = manifest.sha256_file(fpath)
            if digest != e["sha256"]:
                raise _Corrupt(f"{e['path']}: sha256 {digest[:16]}..., manifest says {e['sha256'][:16]}...")

    # -- releasing and evicting ----------------------------------------------------------
    def release(self, path: str) -> None:
        with self._lock:
            held = self._in_use.get(path)
            if held is None:
                return
            held[2] -= 1
            if held[2] > 0:
                return
            del self._in_use[path]
        fd, entry = held[0], held[1]
        try:
            os.utime(os.path.join(entry, COMPLETE_MARKER))  # most recently used
        except OSError:
            pass
        os.close(fd)
        self._evict(os.path.dirname(os.path.dirname(entry)))

    def _evict(self, model_dir: str) -> None:
        """Remove this model's unused entries beyond the keep_unused most recently used."""
        unused: list[tuple[float, str]] = []
        try:
            versions = os.listdir(model_dir)
        except OSError:
            return
        for v in versions:
            vdir = os.path.join(model_dir, v)
            if not os.path.isdir(vdir):
                continue
            for name in os.listdir(vdir):
                if not name.endswith(".lock"):
                    continue
                entry = os.path.join(vdir, name[:-len(".lock")])
                try:
                    used = os.path.getmtime(os.path.join(entry, COMPLETE_MARKER))
                except OSError:
                    used = 0.0  # never completed: first to go
                unused.append((used, entry))
        unused.sort(reverse=True)
        kept = 0
        for _, entry in unused:
            fd = os.open(entry + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use (here or by a sibling process), or being downloaded
                if kept < self.keep_unused and os.path.isfile(os.path.join(entry, COMPLETE_MARKER)):
                    kept += 1
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                for leftover in os.listdir(os.path.dirname(entry)):
                    if leftover.startswith(os.path.basename(entry) + ".partial-"):
                        shutil.rmtree(os.path.join(os.path.dirname(entry), leftover), ignore_errors=True)
                os.unlink(entry + ".lock")
                log.info("cache: evicted %s", entry)
            finally:
                os.close(fd)


_SHARED: VersionCache | None = None
_SHARED_LOCK = threading.Lock()


def configure(cache: VersionCache) -> None:
    """Make `cache` the one remote stores use when none is attached to them (serve does this
    from its flags)."""
    global _SHARED
    with _SHARED_LOCK:
        _SHARED = cache


def shared() -> VersionCache:
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = VersionCache()
        return _SHARED


class CachedCopies:
    """Mixin for remote stores: `local_dir` hands runtimes a verified copy from a VersionCache
    (the store's own `cache`, else the process's shared one) and `release_local_dir` lets it go."""

    cache: VersionCache | None = None

    def _cache(self) -> VersionCache:
        return self.cache or shared()

    def local_dir(self, path: str) -> str:
        return self._cache().fetch(self, path)

    def release_local_dir(self, path: str) -> None:
        self._cache().release(path)
