"""Logging setup: human-readable text by default, one JSON object per line with --log_format=json."""

from __future__ import annotations

import logging
import sys
import time

import orjson

_EXTRA_FIELDS = ("event", "model", "version", "worker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _EXTRA_FIELDS:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(level: str = "info", fmt: str = "text", worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    tag = f" [worker {worker}]" if worker is not None else ""
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        if worker is not None:
            handler.addFilter(lambda record: setattr(record, "worker", worker) or True)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s" + tag + " %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # watchdog logs every inotify event at debug; uvicorn's own info lines duplicate ours.
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, root.level))
