"""Append-only segment files for the prediction log's tensors.

Logged inputs and outputs are most of the prediction log's bytes (3 KB a record for a 784-float
input) and none of its lookups. Written as SQLite blobs they cost ~20 us a record of the serving
process's CPU (overflow pages, WAL frames, then the checkpoint's second copy); appended to a plain
file they cost a memcpy into the page cache. So the SQLite store keeps only the index there (request
id -> segment, offset, row) and the bytes here.

Each process writes its own file (`<host>-<pid>-<ns>.seg`), so writers never share an offset, and
rotates to a new one after `max_bytes` or `max_age` seconds: retention removes whole files, never
rewrites one. Data is written before the index rows that point at it are committed, so a reader
never follows an index row to bytes that are not there; a crash leaves at most an unindexed tail.
"""

from __future__ import annotations

import os
import socket
import threading
import time


_IOV_MAX = 1024  # buffers per writev (Linux's limit)


class SegmentFiles:
    def __init__(self, directory: str, max_bytes: int = 64 << 20, max_age: float = 300.0) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._name = ""
        self._size = 0
        self._opened = 0.0
        os.makedirs(directory, exist_ok=True)

    def append(self, parts: list, total: int) -> tuple[str, int]:
        """Write the buffers (`total` bytes), in order, at the end of this process's current
        segment; returns (segment, offset). The bytes are in the page cache (readable by every
        process) when this returns. A short write (a full disk) is cut off again and raised."""
        with self._lock:
            now = time.time()
            if self._fd is None or self._size >= self.max_bytes or now - self._opened > self.max_age:
                self._rotate(now)
            offset = self._size
            written = 0
            try:
                for i in range(0, len(parts), _IOV_MAX):
                    written += os.writev(self._fd, parts[i:i + _IOV_MAX])
            finally:
                if written != total:
                    os.ftruncate(self._fd, offset)  # nothing half-written stays where the next append goes
            if written != total:
                raise OSError(f"segment {self._name}: wrote {written} of {total} bytes")
            self._size += total
            return self._name, offset

    def _rotate(self, now: float) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._name = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.seg"
        self._fd = os.open(os.path.join(self.directory, self._name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        self._opened = now

    def read(self, name: str, offset: int, length: int) -> bytes | None:
        """The bytes written at offset, or None when the segment is gone (retention removed it)."""
        if os.sep in name or name.startswith("."):
            return None  # an index row never names anything but a file of this directory
        try:
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        return data if len(data) == length else None

    def remove_older_than(self, cutoff: float) -> int:
        """Remove segments last written before cutoff (unix seconds); returns how many. A writer
        rotates at least every max_age seconds, and callers pass a cutoff further back than that
        (the label window is at least as long), so no writer still appends to a file removed here."""
        removed = 0
        with os.scandir(self.directory) as entries:
            for e in entries:
                if not e.name.endswith(".seg") or e.name == self._name:
                    continue
                try:
                    if e.stat().st_mtime < cutoff:
                        os.unlink(e.path)
                        removed += 1
                except FileNotFoundError:
                    pass  # another process pruned it first
        return removed

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd, self._name = None, ""
