"""The REST front end's answer type, before it becomes HTTP bytes."""

from __future__ import annotations

from typing import AsyncIterator

from hotserve.errors import HotserveError
from hotserve.protocols.tfserving_rest import encode_error

JSON = (b"content-type", b"application/json")


class Reply:
    """One HTTP answer. `code` is its canonical status name (OK, NOT_FOUND...), which the
    request metrics count; errors carry theirs, so nothing maps HTTP statuses back. `stream`
    replaces the body for streamed answers (server-sent events)."""

    __slots__ = ("status", "body", "version", "headers", "code", "stream", "revision")

    def __init__(self, status: int, body: bytes, version: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None, code: str = "OK",
                 stream: AsyncIterator[bytes] | None = None) -> None:
        self.status = status
        self.body = body
        self.version = version
        self.headers = headers
        self.code = code
        self.stream = stream
        self.revision: str | None = None  # X-Model-Revision beside X-Model-Version


def error_reply(exc: HotserveError, version: str | None = None) -> Reply:
    headers = None
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers = [JSON, (b"retry-after", str(max(1, int(retry + 0.999))).encode())]
    return Reply(exc.http_status, encode_error(exc.message), version, headers, code=exc.code.value)
