"""Size limits every decoder applies before it allocates: what a request *declares* (shapes,
element counts, compressed sizes) is checked by arithmetic first, so a 100-byte request can
never make the server allocate gigabytes.

The limits are process settings, configured once at start from the command line
(--max_request_tensor_bytes, --rest_api_max_body_bytes).
"""

from __future__ import annotations

import math
import zlib

from hotserve.errors import Code, HotserveError, InvalidArgument, clip

# Bytes of tensors one request may declare beyond twice its own size (broadcasts, typed fields).
MAX_REQUEST_TENSOR_BYTES = 256 << 20
# Largest REST body after its Content-Encoding is undone.
MAX_DECODED_BODY_BYTES = 64 << 20
# Names in URLs and messages longer than this are refused (and cut when echoed).
MAX_NAME_LENGTH = 256


class TooLarge(HotserveError):
    """A request over a size limit: 413 over REST, RESOURCE_EXHAUSTED over gRPC."""

    code = Code.RESOURCE_EXHAUSTED

    @property
    def http_status(self) -> int:
        return 413


def configure(max_request_tensor_bytes: int | None = None, max_decoded_body_bytes: int | None = None) -> None:
    global MAX_REQUEST_TENSOR_BYTES, MAX_DECODED_BODY_BYTES
    if max_request_tensor_bytes is not None:
        MAX_REQUEST_TENSOR_BYTES = max_request_tensor_bytes
    if max_decoded_body_bytes is not None:
        MAX_DECODED_BODY_BYTES = max_decoded_body_bytes


class TensorBudget:
    """The tensor bytes one request may still declare: max(limit, 2 x the request's own size)."""

    __slots__ = ("left", "limit")

    def __init__(self, request_bytes: int = 0) -> None:
        self.limit = max(MAX_REQUEST_TENSOR_BYTES, 2 * request_bytes)
        self.left = self.limit

    def charge(self, where: str, shape: tuple[int, ...], itemsize: int) -> int:
        """Account for a tensor of `shape` before allocating it; returns its element count."""
        count = math.prod(shape)
        need = count * itemsize
        if need > self.left:
            raise TooLarge(f"{where}: shape {list(shape)} declares {need} bytes of tensors; this request may declare at "
                           f"most {self.limit} bytes in all (--max_request_tensor_bytes)")
        self.left -= need
        return count


MAX_RANK = 32


def check_shape(where: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A declared shape numpy can hold: non-negative, at most MAX_RANK dimensions, and a size
    (even of an empty tensor's other dimensions) under 2**59 elements."""
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"{where}: shape has {len(shape)} dimensions; at most {MAX_RANK} are supported")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{where}: shape {list(shape)} has a negative dimension")
    if math.prod(d for d in shape if d) >= 1 << 59:  # numpy also multiplies by the item size (<= 16)
        raise InvalidArgument(f"{where}: shape {list(shape)} describes more elements than any array can hold")
    return shape


def check_name(kind: str, name: str) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"{kind} name {clip(name)!r} is {len(name)} characters; at most {MAX_NAME_LENGTH} are allowed")


def decompress(body: bytes, encoding: str | None) -> bytes:
    """Undo a Content-Encoding, refusing (413) output larger than MAX_DECODED_BODY_BYTES
    without ever inflating more than that."""
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise InvalidArgument(f"unsupported Content-Encoding {encoding!r}; expected gzip, deflate or none")
    limit = MAX_DECODED_BODY_BYTES
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"request body is not valid {encoding}: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise TooLarge(f"request body inflates to more than {limit} bytes ({encoding}, {len(body)} bytes sent); "
                       "the limit is --rest_api_max_body_bytes")
    if not d.eof:
        raise InvalidArgument(f"request body is not valid {encoding}: the stream is truncated")
    return out
