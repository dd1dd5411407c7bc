"""Request ids of the prediction log's index packed as runs: one index row for many ids.

The server makes ids as 32 hex digits, a 64-bit process prefix and a 64-bit counter
(server/frame.py), so the ids of one writer batch share their prefix and sit in a narrow range
of counters. A run stores such a range as one row: the prefix, the first and last counter, and
the counters sorted with each one's row in the chunk and its time. Indexing each id as its own
row cost the index writer ~2-3 us of CPU a logged request (two B-trees and the Python that
builds the row) on the same two cores as the serving loops; a run costs one row a batch.

Any id of exactly 32 lower-case hex digits packs (uuid4().hex and nginx's $request_id from
clients too): the mapping from such an id to (prefix, counter) is one to one, so a lookup of the
same text finds it and no other. Other ids are indexed one row each, as before. A run's counters
span at most SPAN, so a lookup reads only the runs whose first counter lies within SPAN below the
id's: a straggler (a request that took longer than SPAN ids to answer) starts a run of its own.
"""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np

SPAN = 4096  # counters one run may span: bounds the runs a lookup reads (~SPAN / ids per batch)

_MAX = (1 << 63) - 1
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX = re.compile(r"[0-9a-f]*")


def packed(request_id: str) -> tuple[int, int] | None:
    """(prefix, counter) as signed 64-bit integers (SQLite's) when the id packs, else None."""
    if _HEX32.fullmatch(request_id) is None:
        return None
    prefix, counter = np.frombuffer(bytes.fromhex(request_id), ">i8")
    return int(prefix), int(counter)


def split(ids: list[str]) -> tuple[list[int], list[int]]:
    """Positions of the ids that pack and of those that do not. A batch of server-made ids
    is checked with two C-level passes, no Python per id."""
    if len(set(map(len, ids))) == 1 and len(ids[0]) == 32 and _HEX.fullmatch("".join(ids)) is not None:
        return list(range(len(ids))), []
    yes, no = [], []
    for k, rid in enumerate(ids):
        (yes if _HEX32.fullmatch(rid) is not None else no).append(k)
    return yes, no


def runs(ids: list[str], times: list[float], rows: list[int]) -> Iterator[tuple[int, int, int, bytes, bytes, bytes]]:
    """The packable ids at positions `rows` of a chunk as runs: (prefix, first counter, last
    counter, counters, rows, times), the last three as little-endian int64, int32, float64
    arrays ordered by counter."""
    if not rows:
        return
    pairs = np.frombuffer(bytes.fromhex("".join([ids[k] for k in rows])), ">i8").reshape(-1, 2).astype("<i8")
    at = np.asarray(rows, dtype="<i4")
    when = np.asarray(times, dtype="<f8")[at]
    prefixes = pairs[:, 0]
    groups = [slice(None)] if (prefixes == prefixes[0]).all() else \
        [prefixes == p for p in np.unique(prefixes)]  # ids from clients: one prefix each, as a rule
    for g in groups:
        counters, k, t = pairs[g, 1], at[g], when[g]
        order = np.argsort(counters, kind="stable")
        counters, k, t = counters[order], k[order], t[order]
        prefix = int(prefixes[g][0])
        start = 0
        while start < len(counters):
            end = int(np.searchsorted(counters, min(int(counters[start]) + SPAN, _MAX), side="right")) if \
                int(counters[-1]) - int(counters[start]) > SPAN else len(counters)
            yield (prefix, int(counters[start]), int(counters[end - 1]), counters[start:end].tobytes(),
                   k[start:end].tobytes(), t[start:end].tobytes())
            start = end


def find(counter: int, counters: bytes, rows: bytes, times: bytes) -> tuple[int, float] | None:
    """(row in the chunk, time) of counter in a run, or None."""
    c = np.frombuffer(counters, "<i8")
    i = int(np.searchsorted(c, counter))
    if i == len(c) or int(c[i]) != counter:
        return None
    return int(np.frombuffer(rows, "<i4")[i]), float(np.frombuffer(times, "<f8")[i])


def lookup_bounds(counter: int) -> tuple[int, int]:
    """The range of a run's first counter that can hold counter (clamped to int64)."""
    return max(counter - SPAN, -_MAX - 1), counter
