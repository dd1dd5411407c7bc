"""Opening a feedback store from its URL (kept apart from store.py, which the stores import)."""

from __future__ import annotations

import os

from hotserve.learning.store import FeedbackStore, Retention


def open_store(url: str, retention: Retention | None = None) -> FeedbackStore:
    """sqlite:///path/feedback.db, a plain path (a directory gets feedback.sqlite inside), or
    redis://host:port/db."""
    retention = retention or Retention()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from hotserve.learning.redis_store import RedisStore

        return RedisStore(url, retention)
    path = url[len("sqlite://"):] if url.startswith("sqlite://") else url
    if os.path.isdir(path) or not os.path.splitext(path)[1]:
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, "feedback.sqlite")
    from hotserve.learning.sqlite_store import SqliteStore

    return SqliteStore(path, retention)
