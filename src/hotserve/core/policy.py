"""Version policies: which of the complete versions should be live (TF Serving's names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol


class VersionPolicy(Protocol):
    def select(self, candidates: Iterable[int]) -> set[int]:
        ...


@dataclass(frozen=True)
class Latest:
    num_versions: int = 1

    def __post_init__(self) -> None:
        if self.num_versions < 1:
            raise ValueError(f"latest policy needs num_versions >= 1, got {self.num_versions}")

    def select(self, candidates: Iterable[int]) -> set[int]:
        return set(sorted(candidates, reverse=True)[: self.num_versions])


@dataclass(frozen=True)
class All:
    def select(self, candidates: Iterable[int]) -> set[int]:
        return set(candidates)


@dataclass(frozen=True)
class Specific:
    versions: frozenset[int]

    def select(self, candidates: Iterable[int]) -> set[int]:
        return set(candidates) & set(self.versions)
