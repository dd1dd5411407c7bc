"""The body of POST /v1/models/{m}/versions/{v}:update_parameters, JSON or safetensors.

JSON:
    {"updates": [{"name": "ad_embedding", "rows": [3, 17], "values": [[...], [...]]},
                 {"name": "fc2.bias", "values": [...]}],
     "expect_revision": 4, "source": "my-pipeline"}

safetensors (`Content-Type: application/x-safetensors`): tensors `NAME` (whole) and `NAME.rows`
+ `NAME.values` (rows); `expect_revision` and `source` come from the query string or the
safetensors metadata (`__metadata__`).

Parsing only: names, dtypes and shapes are checked against the version's tensors by the keeper
(core/parameters.py) before anything is built.
"""

from __future__ import annotations

import json
import struct
from urllib.parse import parse_qs

import numpy as np
import orjson

from hotserve.errors import InvalidArgument
from hotserve.protocols.limits import TensorBudget, TooLarge

SAFETENSORS = "application/x-safetensors"

Raw = tuple[str, np.ndarray, "np.ndarray | None"]


def _int_field(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{name} must be a non-negative integer revision, got {value!r}")
    return value


def parse(body: bytes, content_type: str | None, query: bytes | str = b"") -> tuple[list[Raw], int | None, str]:
    """(updates as (name, values, rows or None), expect_revision, source)."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    params = {k: v[-1] for k, v in parse_qs(query or "").items()}
    if content_type and content_type.split(";")[0].strip().lower() == SAFETENSORS:
        updates, meta = _safetensors(body)
        expect = _int_field(params.get("expect_revision", meta.get("expect_revision")), "expect_revision")
        return updates, expect, str(params.get("source", meta.get("source", "api")))[:200]
    return _json(body, params)


def _json(body: bytes, params: dict) -> tuple[list[Raw], int | None, str]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"the body is not JSON ({exc}); expected {{\"updates\": [{{\"name\": ..., \"values\": ...}}]}} "
                              f"or Content-Type: {SAFETENSORS}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("updates"), list):
        raise InvalidArgument('expected a JSON object {"updates": [{"name": "<tensor>", "values": [...], '
                              '"rows": [...] (optional)}], "expect_revision": <n> (optional)}')
    budget = TensorBudget(len(body))
    out: list[Raw] = []
    for i, u in enumerate(doc["updates"]):
        if not isinstance(u, dict) or not isinstance(u.get("name"), str) or "values" not in u:
            raise InvalidArgument(f"updates[{i}] must be an object with a string 'name' and 'values' (and optional 'rows')")
        unknown = set(u) - {"name", "values", "rows"}
        if unknown:
            raise InvalidArgument(f"updates[{i}] has unknown key(s) {sorted(unknown)}; expected name, values, rows")
        try:
            values = np.asarray(u["values"])
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"updates[{i}] ({u['name']!r}): values are not a rectangular array of numbers ({exc})") from None
        if values.dtype == object or values.dtype.kind not in "fiub":
            raise InvalidArgument(f"updates[{i}] ({u['name']!r}): values must be numbers in a rectangular nested list")
        budget.charge(f"updates[{i}]", values.shape, values.dtype.itemsize)
        rows = None
        if u.get("rows") is not None:
            rows = np.asarray(u["rows"])
            if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
                raise InvalidArgument(f"updates[{i}] ({u['name']!r}): rows must be a list of integers")
        out.append((u["name"], values, rows))
    expect = _int_field(doc.get("expect_revision", params.get("expect_revision")), "expect_revision")
    source = doc.get("source", params.get("source", "api"))
    return out, expect, str(source)[:200]


def _safetensors(body: bytes) -> tuple[list[Raw], dict]:
    """Checked by arithmetic before anything is allocated: the header's length and every
    tensor's declared extent must lie inside the body."""
    from hotserve.repository.deltas import decode_updates

    if len(body) < 8:
        raise InvalidArgument(f"a safetensors body starts with an 8-byte header length; got {len(body)} bytes")
    (n,) = struct.unpack("<Q", body[:8])
    if n > len(body) - 8 or n > 100 << 20:
        raise InvalidArgument(f"safetensors header length {n} exceeds the body ({len(body)} bytes)")
    try:
        header = json.loads(body[8:8 + n])
    except ValueError as exc:
        raise InvalidArgument(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidArgument("safetensors header must be a JSON object")
    meta = header.get("__metadata__") or {}
    if len(body) > TensorBudget(len(body)).limit:
        raise TooLarge(f"the delta is {len(body)} bytes; at most {TensorBudget(len(body)).limit} (--max_request_tensor_bytes)")
    try:
        updates = decode_updates(body)
    except ValueError as exc:
        raise InvalidArgument(f"bad safetensors body: {exc}") from None
    return updates, meta if isinstance(meta, dict) else {}
