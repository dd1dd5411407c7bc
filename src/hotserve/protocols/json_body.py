"""The one way a JSON request body becomes a dict, with errors that say what was expected."""

from __future__ import annotations

import orjson

from hotserve.errors import InvalidArgument


def parse_object(raw: bytes | memoryview, expected: str, empty: dict | None = None) -> dict:
    """`raw` as a JSON object. With `empty`, an empty body stands for it instead of an error."""
    if not raw:
        if empty is not None:
            return empty
        raise InvalidArgument(f"empty request body; expected {expected}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"request body must be {expected}, got a JSON {type(doc).__name__}")
    return doc
