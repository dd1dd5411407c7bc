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

The bytes bypass the page cache (O_DIRECT, where the filesystem has it): each append is copied
into one reused page-aligned buffer and written from there, padded to a 4 KiB boundary. A log
is written once and read back only for the requests that get a label, so caching it buys
little, and the page cache's copy is dear: every page of a growing log is memory the kernel
must find, by evicting something or, on a VM like the one the benchmarks run on, by a first
touch of guest memory that the host must back (docs/learning.md has the figures). Where
O_DIRECT is refused (tmpfs) the same padded writes go through the page cache.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import threading
import time

import numpy as np

_ALIGN = 4096  # O_DIRECT wants offsets, lengths and memory aligned to the device's block; 4 KiB suits 512 B ones too
_STAGING = 4 << 20  # the reused buffer: an append larger than this is written in pieces


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class SegmentFiles:
    def __init__(self, directory: str, max_bytes: int = 64 << 20, max_age: float = 300.0,
                 direct_io: bool = True) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.direct_io = direct_io
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._name = ""
        self._size = 0
        self._opened = 0.0
        self._direct = False
        # Page-aligned (mmap) and reused, so its pages stay resident and warm: one allocation a
        # process, not one a batch. Made on first append: a store that never logs pays nothing.
        self._stage: mmap.mmap | None = None
        self._view: memoryview | None = None
        os.makedirs(directory, exist_ok=True)

    def append(self, parts: list, total: int) -> tuple[str, int]:
        """Write the buffers (`total` bytes), in order, at the end of this process's current
        segment, padded with zeros to the next 4 KiB; returns (segment, offset). The bytes are
        readable by every process when this returns. A short write (a full disk) is cut off
        again and raised."""
        with self._lock:
            now = time.time()
            if self._fd is None or self._size >= self.max_bytes or now - self._opened > self.max_age:
                self._rotate(now)
            offset = self._size
            written = 0
            try:
                written = self._write_parts(parts, offset)
            finally:
                if written < total:
                    os.ftruncate(self._fd, offset)  # nothing half-written stays where the next append goes
            self._size = offset + written
            return self._name, offset

    @property
    def direct(self) -> bool:
        """Whether the current segment bypasses the page cache."""
        return self._direct

    def _write_parts(self, parts: list, offset: int) -> int:
        """Copy the parts into the staging buffer, writing it out each time it fills; returns the
        bytes written, padding included. A part is a buffer, or a list of arrays of one shape and
        dtype (tensors.encode_rows_parts), copied back to back by concatenate, as many at a time
        as fit: an array copied on its own costs ~0.55 us of bytecode, in a concatenate ~0.2 us."""
        if self._stage is None:
            self._stage = mmap.mmap(-1, _STAGING)
            self._view = memoryview(self._stage)
        view = self._view
        start = offset
        used = 0
        for part in parts:
            pieces = (part,)
            if type(part) is list:
                first, i = part[0], 0
                each = first.nbytes
                while first.ndim and each and i < len(part):  # (an empty tensor has nothing to copy)
                    k = min(len(part) - i, (_STAGING - used) // each)
                    if k == 0:
                        if used < _ALIGN:
                            break  # one array is larger than the buffer: copied in pieces below
                        used, offset = self._flush(used, offset)
                        continue
                    out = np.frombuffer(self._stage, first.dtype, first.size * k, used)
                    np.concatenate(part[i:i + k], out=out.reshape((-1, *first.shape[1:])))
                    used += k * each
                    i += k
                pieces = part[i:]
            for piece in pieces:
                if type(piece) is not bytes:
                    piece = np.ascontiguousarray(piece)  # concatenate takes any strides; a byte view does not
                    if not piece.nbytes:
                        continue  # nothing to copy (and no byte view of an empty shape)
                data = memoryview(piece).cast("B")
                size = len(data)
                pos = 0
                while pos < size:
                    take = min(size - pos, _STAGING - used)
                    view[used:used + take] = data[pos:pos + take]
                    used += take
                    pos += take
                    if used == _STAGING:
                        used, offset = self._flush(used, offset)
        if used:
            padded = _aligned(used)
            view[used:padded] = bytes(padded - used)  # never an earlier append's stale bytes
            offset += self._write(padded, offset)
        return offset - start

    def _flush(self, used: int, offset: int) -> tuple[int, int]:
        """Write the staged bytes up to the last whole block; the rest moves to the front.
        Returns (bytes still staged, the file offset after the write)."""
        cut = used - used % _ALIGN
        offset += self._write(cut, offset)
        self._view[:used - cut] = self._view[cut:used]
        return used - cut, offset

    def _write(self, length: int, offset: int) -> int:
        n = os.pwrite(self._fd, self._view[:length], offset)
        if n != length:
            raise OSError(errno.ENOSPC, f"segment {self._name}: wrote {n} of {length} bytes at offset {offset}")
        return n

    def _rotate(self, now: float) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._name = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.seg"
        path = os.path.join(self.directory, self._name)
        self._direct = self.direct_io and hasattr(os, "O_DIRECT")
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if self._direct else 0), 0o600)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self._direct:
                raise
            self._direct = False  # the filesystem has no direct I/O (tmpfs): the same writes, through the cache
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
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
