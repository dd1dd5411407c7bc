"""JSON request bodies whose tensors are arrays of numbers, parsed straight into numpy.

`{"instances": [[0.1, 0.2, ...]]}` is most of what a TF Serving REST client sends. The general
path (orjson, then `np.asarray`) makes a Python float object per value and then walks them
again: 35 us for a 784-float row here, 1.1 ms for 32 rows. simdjson (pysimdjson) parses the
body and copies the numbers out as float64 in C: 14 us and 0.5 ms. This module takes only the
bodies it can read exactly like the general path and says None to everything else, which then
takes the general path with its error messages: an object with the one key (and at most a
`signature_name` string), no duplicate keys, an array of numbers one or two levels deep, every
row as long as the first. A body with any object inside (named instances, `{"b64": ...}`) is
turned away by a byte count before it is parsed: ~2 us for the detour, not a wasted parse.

A KServe V2 infer body (`parse_infer`) whose every input is FP16/FP32/FP64 with `data` one flat
array of numbers is read whole by simdjson into the dict orjson would make, except that each
`data` arrives as a float64 array: v2.json_to_numpy then casts it, with the general path's checks
and messages. Any other input type, nested `data`, an object with a repeated key, or anything
simdjson cannot give exactly as orjson does turns the whole body to the general path.

Why the bracket count: simdjson flattens nested arrays when it copies numbers out, so a row
hiding a deeper array (`[[1, 2], [3, [4]]]`) would pass the length checks. In a body whose keys
are fixed names, whose `signature_name` holds no `[` and whose array holds only numbers, every
`[` is an array's start, so counting them (a C-level scan: memchr for bodies of large rows) proves
there is no deeper one.
"""

from __future__ import annotations

import re
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
# One parser per process, taken in turn. simdjson parses holding the GIL (two threads parse no
# faster than one), so a parser per thread bought no concurrency, and each kept buffers sized
# for the largest body it had read: ~0.9 MiB resident per model thread after 170 KB bodies.
_parser = None
_parser_lock = threading.Lock()


def _with_parser(read, body: bytes, *args):
    """read(parser, body, *args) with the process's parser; None without simdjson."""
    global _parser
    if simdjson is None:
        return None
    with _parser_lock:
        if _parser is None:
            _parser = simdjson.Parser()
        try:
            return read(_parser, body, *args)
        except RuntimeError:
            _parser = None  # a parser left holding a document (never expected): start afresh
            return None


# Below this many body bytes per expected occurrence, bytes.count beats a chain of finds.
_FIND_BYTES_PER_HIT = 512


def _occurs(body: bytes, char: bytes, expected: int) -> bool:
    """Whether the byte `char` occurs exactly `expected` times in body. bytes.find is memchr
    (SIMD) where bytes.count steps byte by byte: over a 173 KB batch-32 body with 33 arrays,
    34 finds take 10 us against 77 us for count, over a 5 KB row 0.6 against 1.7 us. A body of
    many tiny rows (a thousand 2-value rows: 135 vs 3 us) keeps count."""
    if len(body) < expected * _FIND_BYTES_PER_HIT:
        return body.count(char) == expected
    find = body.find
    i = -1
    for _ in range(expected):
        i = find(char, i + 1)
        if i < 0:
            return False
    return find(char, i + 1) < 0


def parse(body: bytes, keys: tuple[str, ...]) -> NumbersDoc | None:
    """The body as {key: array} when it is `{"<key>": <rectangular numbers>}` for one of keys,
    with an optional `"signature_name": "<name>"`."""
    if type(body) is not bytes or not _occurs(body, b"{", 1):
        return None
    fields = _with_parser(_read, body, keys)
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
        if not _occurs(body, b"[", arrays):
            return None
        out[key] = np.frombuffer(values.as_buffer(of_type="d"), dtype=np.float64).reshape(shape)
    except (ValueError, TypeError):
        return None  # not JSON, not this shape, or not numbers: the general path says which
    return out


_V2_FLOATS = frozenset({"FP16", "FP32", "FP64"})
# The first input's datatype, looked for near the start (clients write it before `data`): a body
# of integers or strings is turned away before the parse (INT32, one 784-value row: parsed and
# then turned away it cost 44.1 us against 31.5 us for the general path alone; now 28.8 vs 28.6).
_FIRST_TYPE = re.compile(rb'"datatype"\s*:\s*"([A-Z0-9]+)"')
_FIRST_TYPE_WITHIN = 4096


def parse_infer(body: bytes) -> dict | None:
    """A V2 infer request body as orjson would parse it, with each floating-point input's flat
    `data` as a float64 array; None for a body this module does not read (see above)."""
    if type(body) is not bytes:
        return None
    first = _FIRST_TYPE.search(body, 0, _FIRST_TYPE_WITHIN)
    if first is not None and first.group(1).decode("ascii") not in _V2_FLOATS:
        return None
    return _with_parser(_read_infer, body)


def _read_infer(parser, body: bytes) -> dict | None:
    arrays = [0]  # every array read; the bracket count then proves none went unread (see above)
    try:
        doc = parser.parse(body)
        if not isinstance(doc, simdjson.Object):
            return None
        out = _plain(doc, arrays, "inputs")
        inputs = doc["inputs"] if "inputs" in out else None
        if isinstance(inputs, simdjson.Array):
            arrays[0] += 1
            specs = []
            for spec in inputs:
                if not isinstance(spec, simdjson.Object):
                    specs.append(_plain(spec, arrays))
                    continue
                item = _plain(spec, arrays, "data")
                if "data" in item:
                    data = spec["data"]
                    if item.get("datatype") in _V2_FLOATS and isinstance(data, simdjson.Array):
                        flat = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
                        if flat.size != len(data):
                            return None  # nested: the general path
                        arrays[0] += 1
                        item["data"] = flat
                    else:
                        return None  # integers, booleans, strings: orjson makes those objects faster
                specs.append(item)
            out["inputs"] = specs
        elif "inputs" in out:
            out["inputs"] = _plain(inputs, arrays)
    except (ValueError, TypeError, KeyError):
        return None
    return out if _occurs(body, b"[", arrays[0]) else None


def _plain(value, arrays: list, skip: str = ""):
    """A simdjson value as Python objects; an object's `skip` key is left as a placeholder
    (the caller reads it). A repeated key raises: orjson keeps the last, simdjson's lookup the first."""
    if isinstance(value, simdjson.Object):
        keys = list(value.keys())  # items() would convert every value, data arrays included
        if len(set(keys)) != len(keys):
            raise ValueError("repeated key")
        return {k: None if k == skip else _plain(value[k], arrays) for k in keys}
    if isinstance(value, simdjson.Array):
        arrays[0] += 1
        return [_plain(v, arrays) for v in value]
    return value
