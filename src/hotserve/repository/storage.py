"""Storage behind a model base path.

Only local paths today; the scanner and publisher talk to this interface so that an fsspec
backend (s3://, gs://) can slot in without touching them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol


class StorageUnavailable(Exception):
    """The base path cannot be listed right now (missing, unreadable, network down)."""


@dataclass(frozen=True)
class FileStat:
    relpath: str
    size: int
    mtime_ns: int


class Storage(Protocol):
    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        """(name, is_dir) for each entry directly under path."""

    def stat_files(self, path: str) -> list[FileStat]:
        """Every file below path, recursively, sorted by relpath."""

    def read_bytes(self, path: str) -> bytes:
        ...

    def local_dir(self, path: str) -> str:
        """A local directory holding the same files, for runtimes that need one."""


class LocalStorage:
    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        try:
            with os.scandir(path) as it:
                return [(e.name, e.is_dir(follow_symlinks=True)) for e in it]
        except OSError as exc:
            raise StorageUnavailable(f"cannot list {path}: {exc.strerror or exc}") from exc

    def stat_files(self, path: str) -> list[FileStat]:
        out: list[FileStat] = []
        stack = [""]
        while stack:
            rel = stack.pop()
            full = os.path.join(path, rel) if rel else path
            with os.scandir(full) as it:
                for e in it:
                    erel = os.path.join(rel, e.name) if rel else e.name
                    if e.is_dir(follow_symlinks=True):
                        stack.append(erel)
                    else:
                        st = e.stat(follow_symlinks=True)
                        out.append(FileStat(erel, st.st_size, st.st_mtime_ns))
        out.sort(key=lambda f: f.relpath)
        return out

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def local_dir(self, path: str) -> str:
        return path


def storage_for(base_path: str) -> Storage:
    if "://" in base_path and not base_path.startswith("file://"):
        scheme = base_path.split("://", 1)[0]
        raise ValueError(f"model_base_path {base_path!r}: storage scheme {scheme!r} is not supported yet; use a local path")
    return LocalStorage()


def normalize_base_path(base_path: str) -> str:
    if base_path.startswith("file://"):
        base_path = base_path[len("file://") :]
    return os.path.abspath(base_path) if "://" not in base_path else base_path
