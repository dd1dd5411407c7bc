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

import bisect
import re
import sys
from array import array
from typing import Iterator

SPAN = 4096  # counters one run may span: bounds the runs a lookup reads (~SPAN / ids per batch)

_HEX32 = re.compile(r"[0-9a-f]{32}")
_BIG_ENDIAN_HOST = sys.byteorder == "big"


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def packed(request_id: str) -> tuple[int, int] | None:
    """(prefix, counter) as signed 64-bit integers (SQLite's) when the id packs, else None."""
    if _HEX32.fullmatch(request_id) is None:
        return None
    return _signed(int(request_id[:16], 16)), _signed(int(request_id[16:], 16))


def split(ids: list[str]) -> tuple[list[int], list[int]]:
    """Positions of the ids that pack and of those that do not. A batch of server-made ids
    is checked with C-level passes, no Python per id: fromhex and back gives the same text only
    for lower-case hex digits (fromhex also takes upper case and spaces)."""
    if len(set(map(len, ids))) == 1 and len(ids[0]) == 32:
        joined = "".join(ids)
        try:
            if bytes.fromhex(joined).hex() == joined:
                return list(range(len(ids))), []
        except ValueError:
            pass
    yes, no = [], []
    for k, rid in enumerate(ids):
        (yes if _HEX32.fullmatch(rid) is not None else no).append(k)
    return yes, no


def _blob(a: array) -> bytes:
    """The array's bytes little-endian, as runs are stored whatever the host."""
    if _BIG_ENDIAN_HOST:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _array(typecode: str, blob: bytes) -> array:
    a = array(typecode)
    a.frombytes(blob)
    if _BIG_ENDIAN_HOST:
        a.byteswap()
    return a


def runs(ids: list[str], times: list[float], rows: list[int]) -> Iterator[tuple[int, int, int, bytes, bytes, bytes]]:
    """The packable ids at positions `rows` of a chunk as runs: (prefix, first counter, last
    counter, counters, rows, times), the last three as little-endian int64, int32, float64
    arrays ordered by counter. Standard library only: the index writer child starts in 50 ms and
    13 MB without numpy, 140 ms and 27 MB with it."""
    if not rows:
        return
    whole = len(rows) == len(ids)
    pairs = array("q", bytes.fromhex("".join(ids if whole else [ids[k] for k in rows])))
    if not _BIG_ENDIAN_HOST:
        pairs.byteswap()  # the hex is big-endian
    prefixes, counters = pairs[0::2], pairs[1::2]
    when = times if whole else [times[k] for k in rows]
    if prefixes.count(prefixes[0]) == len(prefixes):
        groups = [(prefixes[0], counters, rows, when)]
    else:  # ids from clients: one prefix each, as a rule
        members: dict[int, list[int]] = {}
        for i, p in enumerate(prefixes):
            members.setdefault(p, []).append(i)
        groups = [(p, [counters[i] for i in m], [rows[i] for i in m], [when[i] for i in m]) for p, m in members.items()]
    for prefix, cs, ks, ts in groups:
        # Ordered by counter with C-level passes; a batch is nearly in order already, which
        # timsort likes.
        order = sorted(range(len(cs)), key=cs.__getitem__)
        c, k, t = array("q", [cs[i] for i in order]), array("i", [ks[i] for i in order]), array("d", [ts[i] for i in order])
        start = 0
        while start < len(c):
            end = bisect.bisect_right(c, c[start] + SPAN, start) if c[-1] - c[start] > SPAN else len(c)
            yield prefix, c[start], c[end - 1], _blob(c[start:end]), _blob(k[start:end]), _blob(t[start:end])
            start = end


def find(counter: int, counters: bytes, rows: bytes, times: bytes) -> tuple[int, float] | None:
    """(row in the chunk, time) of counter in a run, or None."""
    c = _array("q", counters)
    i = bisect.bisect_left(c, counter)
    if i == len(c) or c[i] != counter:
        return None
    return _array("i", rows)[i], _array("d", times)[i]


def lookup_bounds(counter: int) -> tuple[int, int]:
    """The range of a run's first counter that can hold counter (SQLite's int64 at the bottom)."""
    return max(counter - SPAN, -(1 << 63)), counter
