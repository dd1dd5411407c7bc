"""Error types shared by every layer.

Each error carries a canonical status code (the gRPC/absl names TF Serving uses) so that
front ends map it to HTTP or gRPC statuses in one place instead of guessing from text.
"""

from __future__ import annotations

from enum import Enum


class Code(str, Enum):
    OK = "OK"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    ABORTED = "ABORTED"  # a concurrent change won (e.g. a delta's expect_revision no longer holds): 409
    DATA_LOSS = "DATA_LOSS"
    INTERNAL = "INTERNAL"
    UNKNOWN = "UNKNOWN"


# TF Serving's REST handler maps canonical codes to HTTP statuses this way.
HTTP_STATUS = {
    Code.OK: 200,
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.NOT_FOUND: 404,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
    Code.ABORTED: 409,
    Code.DATA_LOSS: 500,
    Code.INTERNAL: 500,
    Code.UNKNOWN: 500,
}


class HotserveError(Exception):
    """An error with a canonical code; its message is meant for the client."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str, code: Code | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


class InvalidArgument(HotserveError):
    code = Code.INVALID_ARGUMENT


class NotFound(HotserveError):
    code = Code.NOT_FOUND


class Unavailable(HotserveError):
    code = Code.UNAVAILABLE


class Unauthenticated(HotserveError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(HotserveError):
    code = Code.PERMISSION_DENIED


class MethodNotAllowed(HotserveError):
    code = Code.INVALID_ARGUMENT

    @property
    def http_status(self) -> int:
        return 405


class LoadError(HotserveError):
    """A version could not be loaded, verified or validated."""

    code = Code.FAILED_PRECONDITION


def clip(text: str, limit: int = 64) -> str:
    """Client-supplied text (a model name, a label), cut for echoing in a message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
