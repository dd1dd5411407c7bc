"""gs://, hdfs:// and webhdfs:// repositories through fsspec filesystems.

- gs://bucket/prefix: gcsfs (extra `gcs`). Credentials the Google way: GOOGLE_APPLICATION_CREDENTIALS,
  gcloud's application default credentials, or the instance's service account;
  STORAGE_EMULATOR_HOST points it at an emulator. One listing without a delimiter lists a whole
  base path, as on S3 (tree_listing).
- hdfs://namenode:port/path: pyarrow's HadoopFileSystem (extra `hdfs`), which needs libhdfs and a
  Java runtime with the Hadoop jars (JAVA_HOME, HADOOP_HOME, CLASSPATH from `hadoop classpath
  --glob`); HADOOP_USER_NAME sets the user. Checked at start: without libhdfs the server says so
  and exits.
- webhdfs://namenode:http_port/path: the namenode's REST API (extra `webhdfs`, no Java);
  HADOOP_USER_NAME sets the user, WEBHDFS_USE_HTTPS=1 switches to https.

HDFS renames a directory atomically, so publish stages and renames there as on a local disk;
its listings walk directory by directory (one request per directory), which an on-premises
namenode does not bill. Requests are counted per call hotserve makes (a gcsfs listing of more
than 1000 objects pages inside one call).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any, BinaryIO, Callable
from urllib.parse import urlparse

from hotserve.repository.cache import CachedCopies
from hotserve.repository.storage import FileStat, RequestHook, StorageUnavailable, _no_count, register_scheme


def _mtime_ns(info: dict[str, Any]) -> int:
    for key in ("mtime", "updated", "LastModified", "modificationTime", "last_modified"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return int(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            # WebHDFS reports milliseconds; the others seconds.
            return int(value * 1e6) if key == "modificationTime" else int(value * 1e9)
        if isinstance(value, str):
            try:
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return 0


def _etag(info: dict[str, Any]) -> str:
    for key in ("etag", "ETag", "md5Hash", "crc32c", "generation"):
        if info.get(key):
            return str(info[key]).strip('"')
    return ""


class FsspecStorage(CachedCopies):
    local = False

    def __init__(self, url: str, fs: Any, scheme: str, tree_listing: bool, atomic_rename: bool,
                 to_fs_path: Callable[[str], str]) -> None:
        self.url = url
        self.fs = fs
        self.scheme = scheme
        self.tree_listing = tree_listing
        self.atomic_rename = atomic_rename
        self._to_fs = to_fs_path
        self.on_request: RequestHook = _no_count
        self.cache = None  # a VersionCache; the process's shared one when unset

    def join(self, base: str, *parts: str) -> str:
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def _call(self, kind: str, what: str, fn: Callable, *args, missing_ok: bool = False, **kw):
        self.on_request(kind)
        try:
            return fn(*args, **kw)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise
        except (PermissionError, ConnectionError, TimeoutError) as exc:
            raise StorageUnavailable(f"{what}: {exc}") from None
        except OSError as exc:
            raise StorageUnavailable(f"{what}: {exc}") from None
        except Exception as exc:  # client libraries raise their own types (HTTP errors, auth errors)
            raise StorageUnavailable(f"{what}: {type(exc).__name__}: {exc}") from None

    # -- listing --------------------------------------------------------------------------
    def stat_files(self, path: str) -> list[FileStat]:
        root = self._to_fs(path).rstrip("/")
        found = self._call("list", f"cannot list {path}", self.fs.find, root, withdirs=False, detail=True,
                           missing_ok=self.tree_listing)
        if found is None:
            return []
        out = []
        for full, info in found.items():
            full = full.rstrip("/")
            if not full.startswith(root + "/") or info.get("type") == "directory":
                continue
            out.append(FileStat(full[len(root) + 1:], int(info.get("size") or 0), _mtime_ns(info), _etag(info)))
        out.sort(key=lambda f: f.relpath)
        return out

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        try:
            entries = self._call("list", f"cannot list {path}", self.fs.ls, self._to_fs(path), detail=True)
        except FileNotFoundError as exc:
            raise StorageUnavailable(f"cannot list {path}: no such directory") from exc
        return [(e["name"].rstrip("/").rsplit("/", 1)[-1], e.get("type") == "directory") for e in entries]

    def exists(self, path: str) -> bool:
        return bool(self._call("head", f"cannot stat {path}", self.fs.exists, self._to_fs(path)))

    def stat(self, path: str) -> FileStat | None:
        info = self._call("head", f"cannot stat {path}", self.fs.info, self._to_fs(path), missing_ok=True)
        if info is None:
            return None
        return FileStat(path.rstrip("/").rsplit("/", 1)[-1], int(info.get("size") or 0), _mtime_ns(info), _etag(info))

    def uploads_in_progress(self, path: str) -> bool:
        return False  # an HDFS file being written is listed and growing; GCS lists objects only when whole

    # -- reading and writing ----------------------------------------------------------------
    def read_bytes(self, path: str) -> bytes:
        return self._call("get", f"cannot read {path}", self.fs.cat_file, self._to_fs(path))

    def open_read(self, path: str) -> BinaryIO:
        return self._call("get", f"cannot read {path}", self.fs.open, self._to_fs(path), "rb")

    def download(self, path: str, local_path: str, size: int | None = None) -> None:
        self._call("get", f"cannot download {path}", self.fs.get_file, self._to_fs(path), local_path)

    def write_bytes(self, path: str, data: bytes) -> None:
        self._call("put", f"cannot write {path}", self.fs.pipe_file, self._to_fs(path), data)

    def create_new(self, path: str, data: bytes) -> bool:
        # No conditional write through fsspec: exists + write. One writer per version on these stores.
        if self.exists(path):
            return False
        self.write_bytes(path, data)
        return True

    def put_file(self, local_src: str, path: str) -> None:
        self._call("put", f"cannot upload {path}", self.fs.put_file, local_src, self._to_fs(path))

    def makedirs(self, path: str) -> None:
        self._call("put", f"cannot create {path}", self.fs.makedirs, self._to_fs(path), exist_ok=True)

    def remove_tree(self, path: str) -> None:
        self._call("delete", f"cannot remove {path}", self.fs.rm, self._to_fs(path), recursive=True, missing_ok=True)

    def rename(self, src: str, dst: str) -> None:
        if not self.atomic_rename:
            raise NotImplementedError(f"{self.scheme}:// has no atomic rename; publish commits with the manifest")
        self._call("put", f"cannot rename {src}", self.fs.mv, self._to_fs(src), self._to_fs(dst))



def _need(module: str, extra: str, url: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"{url}: needs {module} ({exc}); install hotserve with its extra: "
                         f"pip install 'hotserve[{extra}]'") from None


def open_gcs(url: str) -> FsspecStorage:
    _need("gcsfs", "gcs", url)
    # The plain JSON-API filesystem: gcsfs's default "extended" class first asks the storage
    # control API (gRPC) for each bucket's layout, one more request and one more permission that
    # a model repository does not need.
    from gcsfs.core import GCSFileSystem

    if not urlparse(url).netloc:
        raise ValueError(f"{url!r}: expected gs://bucket/prefix")
    # An emulator takes no credentials; asking Google's auth chain for them would only warn.
    token = "anon" if os.environ.get("STORAGE_EMULATOR_HOST") else None
    fs = GCSFileSystem(token=token, skip_instance_cache=True, use_listings_cache=False)
    return FsspecStorage(url, fs, "gs", tree_listing=True, atomic_rename=False,
                         to_fs_path=lambda p: p.split("://", 1)[1])


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(url)
    if not parsed.hostname:
        raise ValueError(f"{url!r}: expected {parsed.scheme}://namenode:port/path")
    return parsed.hostname, parsed.port or default_port


def open_hdfs(url: str) -> FsspecStorage:
    _need("pyarrow", "hdfs", url)
    from fsspec.implementations.arrow import HadoopFileSystem

    host, port = _host_port(url, 8020)
    try:
        fs = HadoopFileSystem(host=host, port=port, user=os.environ.get("HADOOP_USER_NAME"))
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{url}: cannot connect through pyarrow's HadoopFileSystem ({exc}); hdfs:// needs libhdfs "
                         "and a Java runtime with the Hadoop jars (JAVA_HOME, HADOOP_HOME, CLASSPATH=$(hadoop classpath "
                         "--glob)); webhdfs://namenode:9870/path needs neither") from None
    return FsspecStorage(url, fs, "hdfs", tree_listing=False, atomic_rename=True,
                         to_fs_path=lambda p: urlparse(p).path or "/")


def open_webhdfs(url: str) -> FsspecStorage:
    _need("requests", "webhdfs", url)
    from fsspec.implementations.webhdfs import WebHDFS

    host, port = _host_port(url, 9870)
    https = os.environ.get("WEBHDFS_USE_HTTPS", "0").lower() in ("1", "true", "yes", "on")
    fs = WebHDFS(host, port=port, user=os.environ.get("HADOOP_USER_NAME"), use_https=https,
                 skip_instance_cache=True, use_listings_cache=False)
    return FsspecStorage(url, fs, "webhdfs", tree_listing=False, atomic_rename=True,
                         to_fs_path=lambda p: urlparse(p).path or "/")


register_scheme("gs", open_gcs)
register_scheme("hdfs", open_hdfs)
register_scheme("webhdfs", open_webhdfs)
