"""Storage: the only door into a model repository.

Scanning, watching, manifests, publish (stage + commit), routing state, deltas and the local
copies runtimes load from all go through a Storage, so a repository on object storage
(s3://, gs://, hdfs://) works like a local directory. Paths are strings in the store's own
form: absolute local paths for LocalStorage, full URLs (`s3://bucket/prefix/...`) for remote
stores; `join` builds them.

Three capabilities differ between stores and callers branch on them, never on the scheme:
- `atomic_rename`: a directory can be renamed into place in one step (local filesystems). Where
  it cannot, publish uploads into the final place and the manifest, written last, is the commit.
- `local`: paths are on this machine, so runtimes read them directly and inotify can watch them.
  Remote stores hand runtimes a verified local copy from `local_dir` (repository/cache.py).
- `tree_listing`: one request lists every file below a prefix (S3, GCS: a listing without a
  delimiter). The scanner then reads a whole base path (versions, their files, the routing
  state's entry) with one listing per poll; elsewhere it walks directory by directory.

Remote stores count the requests they make through `on_request(kind)` (kinds: list, head, get,
put, delete), which a server points at hotserve_storage_requests_total so the bill is visible.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Protocol


class StorageUnavailable(Exception):
    """The store cannot be reached or the path cannot be listed right now (missing, unreadable,
    network down). Callers keep what they have and try again later."""


@dataclass(frozen=True)
class FileStat:
    relpath: str
    size: int
    mtime_ns: int
    # An opaque content tag where the store has one (S3's ETag): a changed tag means changed bytes.
    etag: str = ""


RequestHook = Callable[[str], None]


def _no_count(kind: str) -> None:
    pass


class Storage(Protocol):
    scheme: str
    local: bool
    atomic_rename: bool
    tree_listing: bool

    def join(self, base: str, *parts: str) -> str:
        ...

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        """(name, is_dir) for each entry directly under path; StorageUnavailable if it cannot be listed."""

    def stat_files(self, path: str) -> list[FileStat]:
        """Every file below path, recursively, sorted by relpath; StorageUnavailable on failure."""

    def exists(self, path: str) -> bool:
        ...

    def stat(self, path: str) -> FileStat | None:
        """One entry's size and mtime (a directory's too, where the store has directories);
        None if absent. Cheap change detection: one call, not a listing."""

    def read_bytes(self, path: str) -> bytes:
        """The whole object; FileNotFoundError if absent, StorageUnavailable if unreachable."""

    def open_read(self, path: str) -> BinaryIO:
        """A binary stream, for hashing or copying large files without holding them in memory."""

    def write_bytes(self, path: str, data: bytes) -> None:
        """Create or replace one object whole: a reader sees the old bytes or the new, never a part
        (local: temp file, fsync, rename; object stores: one PUT)."""

    def put_file(self, local_src: str, path: str) -> None:
        """Copy a local file to path (upload: multipart for large files). Durable on return."""

    def create_new(self, path: str, data: bytes) -> bool:
        """Create path with data only if it does not exist yet (False if it does): the commit of a
        parameter delta, so two writers never both take one sequence number. Local: a link of a
        synced temp file; S3: a conditional PUT; stores without either: exists + write (one
        writer per version there)."""

    def makedirs(self, path: str) -> None:
        ...

    def remove_tree(self, path: str) -> None:
        """Remove path (a file, or a directory and everything below it); absent is fine."""

    def rename(self, src: str, dst: str) -> None:
        """Move a directory into place atomically; only where atomic_rename is True."""

    def local_dir(self, path: str) -> str:
        """A local directory holding the same files, for runtimes that need one (remote stores:
        downloaded and verified into the cache; StorageUnavailable if the download kept failing,
        LoadError if the store's copy does not match its manifest)."""

    def release_local_dir(self, path: str) -> None:
        """The local copy of path is no longer in use (its version unloaded or failed); the
        cache may evict it."""

    def uploads_in_progress(self, path: str) -> bool:
        """True if an upload below path has started but not finished and is not listed yet (S3
        multipart uploads): a hand copy is not settled while one is running."""


def _discard(path: str) -> None:
    """Remove a temporary file this module made, if it is still there."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _durable_temp(directory: str, data: bytes) -> str:
    """A fsynced temporary file in `directory` holding `data`, with the mode a plain open() would
    give (mkstemp's 0600 would hide manifests and deltas from a server running as another user)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _discard(tmp)
        raise
    return tmp


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask can only be read by setting it


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    scheme = "file"
    local = True
    atomic_rename = True
    tree_listing = False
    on_request: RequestHook = staticmethod(_no_count)  # local requests cost nothing; not counted

    def join(self, base: str, *parts: str) -> str:
        return os.path.join(base, *parts)

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        try:
            with os.scandir(path) as it:
                return [(e.name, _is_dir(e)) for e in it]
        except OSError as exc:
            raise StorageUnavailable(f"cannot list {path}: {exc.strerror or exc}") from exc

    def stat_files(self, path: str) -> list[FileStat]:
        out: list[FileStat] = []
        stack = [""]
        seen_dirs: set[tuple[int, int]] = set()
        try:
            while stack:
                rel = stack.pop()
                full = os.path.join(path, rel) if rel else path
                st = os.stat(full)
                if (st.st_dev, st.st_ino) in seen_dirs:
                    raise StorageUnavailable(f"{full}: symlink loop (a directory links back to one of its parents)")
                seen_dirs.add((st.st_dev, st.st_ino))
                with os.scandir(full) as it:
                    for e in it:
                        erel = os.path.join(rel, e.name) if rel else e.name
                        if _is_dir(e):
                            stack.append(erel)
                        else:
                            fst = e.stat(follow_symlinks=True)
                            out.append(FileStat(erel, fst.st_size, fst.st_mtime_ns))
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not os.path.lexists(path):
                raise
            raise StorageUnavailable(f"cannot read {path}: {exc.strerror or exc}") from exc
        out.sort(key=lambda f: f.relpath)
        return out

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def stat(self, path: str) -> FileStat | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return FileStat(os.path.basename(path), st.st_size, st.st_mtime_ns)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def open_read(self, path: str) -> BinaryIO:
        return open(path, "rb")

    def write_bytes(self, path: str, data: bytes) -> None:
        directory = os.path.dirname(path) or "."
        tmp = _durable_temp(directory, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            _discard(tmp)
            raise
        _fsync(directory)

    def create_new(self, path: str, data: bytes) -> bool:
        directory = os.path.dirname(path) or "."
        tmp = _durable_temp(directory, data)
        try:
            try:
                os.link(tmp, path)  # fails if path exists: atomic create-if-absent, complete when visible
            except FileExistsError:
                return False
        finally:
            _discard(tmp)
        _fsync(directory)
        return True

    def put_file(self, local_src: str, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        shutil.copy2(local_src, path)
        _fsync(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def remove_tree(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)
        _fsync(os.path.dirname(dst) or ".")

    def local_dir(self, path: str) -> str:
        return path

    def release_local_dir(self, path: str) -> None:
        pass

    def uploads_in_progress(self, path: str) -> bool:
        return False  # a file being written is listed (and changing): the settle rule sees it


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:  # a dangling or looping symlink is not a directory we can enter
        return False


# scheme -> factory(url) for remote stores; object-storage modules register themselves here.
_REMOTE: dict[str, Callable[[str], Storage]] = {}
# Modules that register a scheme when imported (kept lazy: their libraries are optional extras),
# and the pip extra that installs what they need.
_PROVIDERS: dict[str, tuple[str, str]] = {}


def register_scheme(scheme: str, factory: Callable[[str], Storage]) -> None:
    _REMOTE[scheme] = factory


def register_provider(scheme: str, module: str, extra: str | None = None) -> None:
    """`module`, once imported, registers `scheme` (imported on first use of a URL with it);
    `extra` names the pip extra that installs its libraries (default: the scheme)."""
    _PROVIDERS[scheme] = (module, extra or scheme)


register_provider("s3", "hotserve.repository.s3")
register_provider("gs", "hotserve.repository.fsspec_store", "gcs")
register_provider("hdfs", "hotserve.repository.fsspec_store", "hdfs")
register_provider("webhdfs", "hotserve.repository.fsspec_store", "webhdfs")


_LOCAL = LocalStorage()


def scheme_of(base_path: str) -> str:
    return base_path.split("://", 1)[0].lower() if "://" in base_path else "file"


def storage_for(base_path: str) -> Storage:
    """The Storage for a base path or URL; ValueError naming the schemes this install supports."""
    scheme = scheme_of(base_path)
    if scheme == "file":
        return _LOCAL
    if scheme not in _REMOTE and scheme in _PROVIDERS:
        import importlib

        module, extra = _PROVIDERS[scheme]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"model_base_path {base_path!r}: {scheme}:// needs an optional dependency that is not "
                             f"installed ({exc}); install hotserve with its extra: pip install 'hotserve[{extra}]'") from None
    factory = _REMOTE.get(scheme)
    if factory is None:
        known = ", ".join(["local paths", *sorted(f"{s}://" for s in {*_REMOTE, *_PROVIDERS})])
        raise ValueError(f"model_base_path {base_path!r}: storage scheme {scheme!r} is not supported; supported: {known}")
    return factory(base_path)


def normalize_base_path(base_path: str) -> str:
    if base_path.startswith("file://"):
        base_path = base_path[len("file://"):]
    if "://" not in base_path:
        return os.path.abspath(base_path)
    scheme, rest = base_path.split("://", 1)
    return f"{scheme.lower()}://{posixpath.normpath(rest).rstrip('/')}" if rest else base_path
