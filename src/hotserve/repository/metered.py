"""A Storage that counts its operations: hotserve_storage_operations_total{scheme, op, outcome}
and their durations, whatever the store (local, s3://, gs://...). (What a remote store bills,
its HTTP requests, is counted by the store itself: hotserve_storage_requests_total{model, kind}.) The serving process wraps each
model's store in it, so scans, manifest reads, routing-state reads and writes and remote
downloads are all counted without any store knowing about metrics."""

from __future__ import annotations

import time
from typing import Any

from hotserve.observability import metrics
from hotserve.repository.storage import Storage

# The requests a Storage makes (join is string work, not a request).
_OPS = ("list_entries", "stat_files", "stat", "exists", "read_bytes", "open_read", "write_bytes", "create_new", "put_file", "makedirs",
        "remove_tree", "rename", "local_dir")


class MeteredStorage:
    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.scheme = inner.scheme
        self.local = inner.local
        self.atomic_rename = inner.atomic_rename
        for op in _OPS:
            if hasattr(inner, op):
                setattr(self, op, self._metered(op, getattr(inner, op)))

    def _metered(self, op: str, fn):
        scheme = self.scheme

        def call(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            outcome = "error"
            try:
                out = fn(*args, **kw)
                outcome = "ok"
                return out
            except FileNotFoundError:
                outcome = "not_found"  # an answer (a routing state not written yet), not a failure
                raise
            finally:
                metrics.storage_operation(scheme, op, outcome, time.perf_counter() - t0)

        call.__name__ = op
        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # join, and anything a store adds


def metered(storage: Storage) -> Storage:
    return storage if isinstance(storage, MeteredStorage) else MeteredStorage(storage)  # type: ignore[return-value]
