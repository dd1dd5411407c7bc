"""Memory accounting for loaded versions against an optional budget (--memory_budget).

Before a load, a version reserves its estimate (its files' size); after the load the
reservation becomes the measured RSS growth. What happens when a load does not fit is the
manager's choice (wait, unload first, refuse); this class only keeps the books.
"""

from __future__ import annotations

import threading


def parse_size(text: str) -> int:
    """'2GiB', '500MB', '1.5G', '123456' -> bytes."""
    t = text.strip().upper().replace(" ", "")
    units = [("KIB", 1 << 10), ("MIB", 1 << 20), ("GIB", 1 << 30), ("TIB", 1 << 40),
             ("KB", 10**3), ("MB", 10**6), ("GB", 10**9), ("TB", 10**12),
             ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40), ("B", 1)]
    for suffix, mult in units:
        if t.endswith(suffix):
            number = t[: -len(suffix)]
            break
    else:
        number, mult = t, 1
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"memory size {text!r}: expected a number with an optional unit such as 512MiB or 2GB") from None
    if value < 0:
        raise ValueError(f"memory size {text!r} is negative")
    return int(value * mult)


class MemoryBudget:
    def __init__(self, budget_bytes: int | None) -> None:
        self.budget = budget_bytes
        self._used: dict[tuple[str, int], int] = {}
        self._cv = threading.Condition()

    def used(self) -> int:
        with self._cv:
            return sum(self._used.values())

    def try_reserve(self, key: tuple[str, int], estimate: int) -> bool:
        with self._cv:
            if self.budget is not None and sum(self._used.values()) + estimate > self.budget:
                return False
            self._used[key] = estimate
            return True

    def wait_reserve(self, key: tuple[str, int], estimate: int, timeout: float) -> bool:
        with self._cv:
            ok = self._cv.wait_for(
                lambda: self.budget is None or sum(self._used.values()) + estimate <= self.budget, timeout)
            if ok:
                self._used[key] = estimate
            return ok

    def commit(self, key: tuple[str, int], measured: int) -> None:
        with self._cv:
            self._used[key] = measured

    def release(self, key: tuple[str, int]) -> None:
        with self._cv:
            self._used.pop(key, None)
            self._cv.notify_all()
