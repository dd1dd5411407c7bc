"""A small, safe binary codec for named numpy tensors (prediction inputs/outputs, labels).

The feedback store keeps tensors as bytes; pickle would let anyone who can write to a shared
store (Redis in a fleet) run code in the learner, so this is data only: a JSON header naming
each tensor's dtype, shape and byte range, followed by the raw little-endian bytes. String
tensors travel in the header as lists of text.
"""

from __future__ import annotations

import struct

import numpy as np
import orjson

_MAGIC = b"HT1"
_ALIGN = 64  # where encode_rows_parts starts each tensor


def encode(tensors: dict[str, np.ndarray]) -> bytes:
    return b"".join(encode_parts(tensors)[0])


def encode_parts(tensors: dict[str, np.ndarray]) -> tuple[list, int]:
    """encode() as a list of buffers (the header, then each tensor's bytes, not copied when the
    array is already contiguous little-endian), for os.writev, which copies them once; and
    their length in bytes."""
    header: dict[str, list] = {}
    chunks: list = []
    offset = 0
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.dtype == object or arr.dtype.kind in "SU":
            flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
            header[name] = ["str", list(arr.shape), flat]
            continue
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        header[name] = [arr.dtype.str.lstrip("<>|="), list(arr.shape), offset, raw.nbytes]
        chunks.append(raw.reshape(-1).view(np.uint8))
        offset += raw.nbytes
    return _framed(header, chunks, offset)


def encode_rows_parts(rows: dict[str, list[np.ndarray]]) -> tuple[list, int]:
    """encode_parts({name: np.stack(arrays)}) without the stack: each name's arrays (same shape
    and dtype, as the prediction log groups them) are one part, a list for the writer to copy
    back to back (segments.py), which is the stacked layout. The body and each tensor start on
    a 64-byte boundary and the record ends on one, so records written one after another keep
    every tensor aligned: a copy into an unaligned destination takes numpy's slow loop (1.5 us
    a 3 KB row against 0.3). Strings (their text is the header) and big-endian arrays are
    stacked instead."""
    header: dict[str, list] = {}
    chunks: list = []
    offset = 0
    for name, arrs in rows.items():
        first = arrs[0]
        if first.dtype == object or first.dtype.kind in "SU" or first.dtype.str[0] == ">":
            return encode_parts({n: np.stack(a) for n, a in rows.items()})
        offset = _pad(chunks, offset)
        size = first.nbytes * len(arrs)
        header[name] = [first.dtype.str.lstrip("<>|="), [len(arrs), *first.shape], offset, size]
        chunks.append(arrs)
        offset += size
    return _framed(header, chunks, _pad(chunks, offset), _ALIGN)


def _pad(chunks: list, offset: int) -> int:
    """Zeros up to the next _ALIGN boundary; the offset after them."""
    gap = -offset % _ALIGN
    if gap:
        chunks.append(bytes(gap))
    return offset + gap


def _framed(header: dict, chunks: list, body_len: int, align: int = 1) -> tuple[list, int]:
    head = orjson.dumps(header)
    pad = -(len(_MAGIC) + 4 + len(head)) % align
    head = _MAGIC + struct.pack("<I", len(head) + pad) + head + b" " * pad  # JSON allows trailing blanks
    return [head, *chunks], len(head) + body_len


def header_length(prefix: bytes) -> int:
    """Bytes before a record's body (magic, length, header), from its first 7 bytes."""
    if prefix[:3] != _MAGIC or len(prefix) < 7:
        raise ValueError("not a hotserve tensor record")
    return 7 + struct.unpack_from("<I", prefix, 3)[0]


def _header(blob: bytes) -> tuple[dict[str, list], int]:
    """A record's header and where its body starts."""
    body = header_length(blob)
    return orjson.loads(blob[7:body]), body


def _text(values: list[str], shape: list[int]) -> np.ndarray:
    """A string tensor from the header's text."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = [s.encode() for s in values]
    return arr.reshape(shape)


def _numeric(spec: list) -> np.dtype:
    return np.dtype(spec[0]).newbyteorder("<")


def row_ranges(head: bytes, k: int) -> list[tuple[str, np.ndarray | None, int, int, np.dtype | None, list]]:
    """Row k of a stacked record, for a reader that fetches one row's bytes instead of the whole
    record. `head` is the record's first header_length() bytes. In the header's order, each
    tensor as (name, the row itself for a string tensor (its text is in the header), else None;
    then the row's offset from the record's start, its length, dtype and shape)."""
    header, body = _header(head)
    out = []
    for name, spec in header.items():
        shape = spec[1]
        if spec[0] == "str":
            per_row = int(np.prod(shape[1:], dtype=np.int64))
            out.append((name, _text(spec[2][k * per_row:(k + 1) * per_row], shape[1:]), 0, 0, None, shape[1:]))
        else:
            size = spec[3] // shape[0] if shape[0] else 0
            out.append((name, None, body + spec[2] + k * size, size, _numeric(spec), shape[1:]))
    return out


def decode(blob: bytes) -> dict[str, np.ndarray]:
    """The tensors of an encoded record (numeric ones copied out of blob)."""
    header, start = _header(blob)
    body = memoryview(blob)[start:]
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if spec[0] == "str":
            out[name] = _text(spec[2], spec[1])
        else:
            out[name] = np.frombuffer(body[spec[2]:spec[2] + spec[3]], dtype=_numeric(spec)).reshape(spec[1]).copy()
    return out


def row(tensors: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Row i of every tensor (the batch dimension is the first)."""
    return {k: v[i] for k, v in tensors.items()}
