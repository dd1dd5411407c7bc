"""The route table: an immutable snapshot of one model's routable versions.

The manager builds a new table and swaps it in with one attribute assignment; readers take
whatever table is current without a lock, then acquire a handle on the version they picked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hotserve.core.loaded import LoadedVersion
from hotserve.errors import NotFound, Unavailable


@dataclass(frozen=True)
class RouteTable:
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    default: LoadedVersion | None = None

    @staticmethod
    def build(loaded: dict[int, LoadedVersion]) -> "RouteTable":
        default = loaded[max(loaded)] if loaded else None
        return RouteTable(dict(loaded), default)

    def pick(self, model: str, version: int | None) -> LoadedVersion:
        if version is None:
            if self.default is None:
                raise Unavailable(f"Servable not available for request: model {model!r} has no version loaded yet")
            return self.default
        lv = self.versions.get(version)
        if lv is None:
            served = ", ".join(str(v) for v in sorted(self.versions)) or "none"
            raise NotFound(f"Servable not found for request: Specific({model}, {version}); versions being served: {served}")
        return lv


# A retry happens only when a swap lands between reading the table and acquiring; a few
# rounds always suffice, the bound only guards against a bug turning into a spin.
_MAX_ROUNDS = 1000


class Route:
    """Holder of the current table for one model."""

    __slots__ = ("model", "table")

    def __init__(self, model: str) -> None:
        self.model = model
        self.table = RouteTable()

    def acquire(self, version: int | None = None) -> LoadedVersion:
        for _ in range(_MAX_ROUNDS):
            lv = self.table.pick(self.model, version)
            if lv.try_acquire():
                return lv
        raise Unavailable(f"model {self.model!r}: could not bind the request to a version; retry")
