"""Read (and write) TFRecord files without TensorFlow, verifying every checksum.

Used for TF Serving warm-up files (assets.extra/tf_serving_warmup_requests: one serialized
tensorflow.serving.PredictionLog per record). Each record is

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) |
    data[length]                   | uint32 masked_crc32c(data)

CRC-32C is computed in pure Python: warm-up files are small, and it keeps the package free of
a native dependency just for this.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_MASK_DELTA = 0xA282EAD8


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of data; pass a previous result as crc to continue over several chunks."""
    table = _TABLE  # local lookups: this loop runs once per byte
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The rotated-and-offset CRC TFRecord stores, so that CRCs of CRCs do not degenerate."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


def _describe(source: str | os.PathLike[str] | BinaryIO) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "<stream>"))


def read_records(source: str | os.PathLike[str] | BinaryIO) -> Iterator[bytes]:
    """Yield each record's data from a TFRecord file (a path or a binary file object).

    Raises ValueError naming the file, record index and byte offset on truncation or on a
    length/data CRC mismatch. Records before the damaged one are still yielded first.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield from _read(f, os.fspath(source))
    else:
        yield from _read(source, _describe(source))


def _read(f: BinaryIO, where: str) -> Iterator[bytes]:
    index = 0
    offset = 0
    while True:
        header = f.read(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise ValueError(
                f"{where}: record {index} at offset {offset}: truncated header"
                f" ({len(header)} of {_HEADER.size} bytes)"
            )
        length, length_crc = _HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            hint = " (the file looks gzip-compressed; only uncompressed TFRecords are supported)" if (
                index == 0 and header[:2] == b"\x1f\x8b"
            ) else ""
            raise ValueError(f"{where}: record {index} at offset {offset}: length CRC mismatch, corrupt file{hint}")
        data = f.read(length)
        if len(data) < length:
            raise ValueError(
                f"{where}: record {index} at offset {offset}: truncated data ({len(data)} of {length} bytes)"
            )
        footer = f.read(_FOOTER.size)
        if len(footer) < _FOOTER.size:
            raise ValueError(
                f"{where}: record {index} at offset {offset}: truncated data CRC"
                f" ({len(footer)} of {_FOOTER.size} bytes)"
            )
        if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
            raise ValueError(f"{where}: record {index} at offset {offset}: data CRC mismatch, corrupt record")
        yield data
        index += 1
        offset += _HEADER.size + length + _FOOTER.size


def encode_record(data: bytes) -> bytes:
    """One record in TFRecord framing."""
    length = struct.pack("<Q", len(data))
    return length + _FOOTER.pack(masked_crc32c(length)) + data + _FOOTER.pack(masked_crc32c(data))


def write_records(path: str | os.PathLike[str], records: Iterable[bytes]) -> None:
    """Write an uncompressed TFRecord file (e.g. a warm-up file) that TensorFlow can read."""
    with open(path, "wb") as f:
        for data in records:
            f.write(encode_record(data))
