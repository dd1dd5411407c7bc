"""The route table: an immutable snapshot of one model's routable versions, labels and canary
split.

The model manager builds a new table from the planner's TableSpec and swaps it in with one
attribute assignment (ModelManager._publish, the only place that assigns it); readers take
whatever table is current without a lock, then acquire a handle on the version they picked.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

from hotserve.core.loaded import Bound, LoadedVersion
from hotserve.core.planner import TableSpec
from hotserve.errors import NotFound, Unavailable, clip


@dataclass(frozen=True)
class RouteTable:
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    default: LoadedVersion | None = None
    labels: dict[str, LoadedVersion] = field(default_factory=dict)
    canary: LoadedVersion | None = None
    canary_weight: float = 0.0  # percent of default-routed requests

    @classmethod
    def from_spec(cls, spec: TableSpec, loaded: dict[int, LoadedVersion]) -> "RouteTable":
        return cls(
            {v: loaded[v] for v in spec.versions},
            loaded[spec.default] if spec.default is not None else None,
            {label: loaded[v] for label, v in spec.labels.items()},
            loaded[spec.canary] if spec.canary is not None else None,
            spec.canary_weight,
        )

    def spec(self) -> TableSpec:
        return TableSpec(
            frozenset(self.versions),
            self.default.version if self.default is not None else None,
            {label: lv.version for label, lv in self.labels.items()},
            self.canary.version if self.canary is not None else None,
            self.canary_weight,
        )

    def pick(self, model: str, version: int | None, label: str | None = None, key: str | None = None) -> LoadedVersion:
        if label is not None:
            lv = self.labels.get(label)
            if lv is None:
                known = ", ".join(f"{k}={v.version}" for k, v in sorted(self.labels.items())) or "none"
                raise NotFound(f"Servable not found for request: label {clip(label)!r} of model {model!r} is not assigned "
                               f"to an available version; labels: {known}")
            return lv
        if version is not None:
            lv = self.versions.get(version)
            if lv is None:
                served = ", ".join(str(v) for v in sorted(self.versions)) or "none"
                raise NotFound(f"Servable not found for request: Specific({model}, {version}); versions being served: {served}")
            return lv
        if self.canary is not None:
            # A request key keeps one client on one side of the split across requests.
            draw = (zlib.crc32(key.encode()) % 10_000) / 100.0 if key else random.random() * 100.0
            if draw < self.canary_weight:
                return self.canary
        if self.default is None:
            raise Unavailable(f"Servable not available for request: model {model!r} has no version loaded yet")
        return self.default


# A retry happens only when a swap lands between reading the table and acquiring; a few
# rounds always suffice, the bound only guards against a bug turning into a spin.
_MAX_ROUNDS = 1000


class Route:
    """Holder of the current table for one model."""

    __slots__ = ("model", "table")

    def __init__(self, model: str) -> None:
        self.model = model
        self.table = RouteTable()

    def acquire(self, version: int | None = None, label: str | None = None, key: str | None = None) -> Bound:
        """Bind to one (version, revision): the picked version's current revision, counted."""
        for _ in range(_MAX_ROUNDS):
            bound = self.table.pick(self.model, version, label, key).try_acquire()
            if bound is not None:
                return bound
        raise Unavailable(f"model {self.model!r}: could not bind the request to a version; retry")
