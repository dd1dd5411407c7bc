"""ASGI plumbing shared by the REST routes: the reply type, header lookup, body reading."""

from __future__ import annotations

from hotserve.errors import HotserveError
from hotserve.protocols.tfserving_rest import encode_error

JSON = (b"content-type", b"application/json")


class Reply:
    """One HTTP answer. `code` is its canonical status name (OK, NOT_FOUND...), which the
    request metrics count; errors carry theirs, so nothing maps HTTP statuses back."""

    __slots__ = ("status", "body", "version", "headers", "code")

    def __init__(self, status: int, body: bytes, version: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None, code: str = "OK") -> None:
        self.status = status
        self.body = body
        self.version = version
        self.headers = headers
        self.code = code


def error_reply(exc: HotserveError, version: str | None = None) -> Reply:
    return Reply(exc.http_status, encode_error(exc.message), version, code=exc.code.value)


def header(scope, name: bytes) -> str | None:
    """A request header's value (`name` lower-case, as ASGI gives them)."""
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(chunks)
