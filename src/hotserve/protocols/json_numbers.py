"""A JSON request body that is one rectangular array of numbers, parsed straight into numpy.

`{"instances": [[0.1, 0.2, ...]]}` is most of what a TF Serving REST client sends. The general
path (orjson, then `np.asarray`) makes a Python float object per value and then walks them
again: 35 us for a 784-float row here, 1.1 ms for 32 rows. simdjson (pysimdjson) parses the
body and copies the numbers out as float64 in C: 14 us and 0.5 ms. This module takes only the
bodies it can read exactly like the general path and says None to everything else, which then
takes the general path with its error messages: an object with the one key (and at most a
`signature_name` string), no duplicate keys, an array of numbers one or two levels deep, every
row as long as the first. A body with any object inside (named instances, `{"b64": ...}`) is
turned away by a byte count before it is parsed: ~2 us for the detour, not a wasted parse.

Why the bracket count: simdjson flattens nested arrays when it copies numbers out, so a row
hiding a deeper array (`[[1, 2], [3, [4]]]`) would pass the length checks. In a body whose keys
are fixed names, whose `signature_name` holds no `[` and whose array holds only numbers, every
`[` is an array's start, so counting them (a C-level scan) proves there is no deeper one.
"""

from __future__ import annotations

import threading

import numpy as np

try:
    import simdjson
except ImportError:  # a platform without its wheels: every body takes the general path
    simdjson = None


class NumbersDoc(dict):
    """{key: float64 array} (and "signature_name" when the body had it) from a body this module
    read; `body` for a caller that needs the general parse after all (an input of a type float64
    cannot carry exactly: integers)."""

    __slots__ = ("body",)


_SIGNATURE = "signature_name"
_local = threading.local()


def _parser():
    p = getattr(_local, "parser", None)
    if p is None:
        p = _local.parser = simdjson.Parser()
    return p


def parse(body: bytes, keys: tuple[str, ...]) -> NumbersDoc | None:
    """The body as {key: array} when it is `{"<key>": <rectangular numbers>}` for one of keys,
    with an optional `"signature_name": "<name>"`."""
    if simdjson is None or type(body) is not bytes or body.count(b"{") != 1:
        return None
    try:
        fields = _read(_parser(), body, keys)
    except RuntimeError:
        _local.parser = None  # a parser left holding a document (never expected): start afresh
        return None
    if fields is None:
        return None
    doc = NumbersDoc(fields)
    doc.body = body
    return doc


def _read(parser, body: bytes, keys: tuple[str, ...]) -> dict | None:
    # Every simdjson proxy must be gone before this thread parses again (the parser refuses
    # otherwise): they are locals of this function only.
    try:
        doc = parser.parse(body)
        if not isinstance(doc, simdjson.Object):
            return None
        names = list(doc.keys())
        tensor = [k for k in names if k in keys]
        if len(tensor) != 1 or len(names) - 1 != (_SIGNATURE in names) or len(set(names)) != len(names):
            return None
        out = {}
        if _SIGNATURE in names:
            sig = doc[_SIGNATURE]
            if not isinstance(sig, str) or "[" in sig:
                return None
            out[_SIGNATURE] = sig
        key = tensor[0]
        values = doc[key]
        if not isinstance(values, simdjson.Array) or not len(values):
            return None
        rows = len(values)
        first = values[0]
        if isinstance(first, simdjson.Array):
            width = len(first)
            if not width or any(len(r) != width for r in values):  # a non-array row has no len: TypeError
                return None
            shape: tuple[int, ...] = (rows, width)
            arrays = rows + 1
        else:
            shape, arrays = (rows,), 1
        if body.count(b"[") != arrays:
            return None
        out[key] = np.frombuffer(values.as_buffer(of_type="d"), dtype=np.float64).reshape(shape)
    except (ValueError, TypeError):
        return None  # not JSON, not this shape, or not numbers: the general path says which
    return out
