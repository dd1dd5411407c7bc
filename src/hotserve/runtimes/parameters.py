"""Live parameters: the named tensors of a loaded version that deltas may write, held as
immutable states built copy-on-write.

A state maps each updatable tensor to its value at one revision:
- a dense tensor is a read-only numpy array; a delta touching it makes a new array (whole
  tensors: the delta's values; rows: a copy with the rows written), every other tensor is shared;
- an embedding table (a runtime hosts it outside its graph, e.g. ONNX Gather tables) is a
  `TableView`: one big base array shared by every revision of the version, plus a small sorted
  overlay of rows (rows + values) that differ from the base. A row delta builds a new overlay
  (old overlay merged with the delta's rows: cost proportional to the overlay, never to the
  table), so memory grows by what the delta touches, never by a second table.

Overlays are folded back into the base in place (`TableStore.fold`), RCU style: only once every
state other than the head has drained (no request is reading the base through an older view),
and only rows the head's own overlay covers are written, so a request reading the head (or
anything derived from it) sees the same value before, during and after the write. The caller
(core/parameters.py) decides when: after the old states' last request released them.

A delta is validated whole (names, dtypes, shapes, row ranges, duplicates) before anything is
built: it applies whole or not at all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Mapping, Union

import numpy as np

from hotserve.errors import InvalidArgument, NotFound


@dataclass(frozen=True)
class ParamSpec:
    """One updatable tensor: its dtype, shape and how it is held ('dense' | 'table')."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    kind: str = "dense"

    def describe(self) -> dict:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape), "kind": self.kind}


@dataclass(frozen=True)
class Update:
    """One tensor's change: whole (rows None) or some of its rows (along the first axis)."""

    name: str
    values: np.ndarray
    rows: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + (self.rows.nbytes if self.rows is not None else 0))

    @property
    def row_count(self) -> int:
        return 0 if self.rows is None else int(len(self.rows))


class TableStore:
    """The base array of one table, shared by every state of a version; written only by fold()."""

    __slots__ = ("base", "lock")

    def __init__(self, base: np.ndarray) -> None:
        self.base = np.require(base, requirements="C")
        self.lock = threading.Lock()  # folds of one table never overlap (the delta thread only)

    def fold(self, view: "TableView") -> "TableView":
        """Write the view's overlay into the base; returns the equivalent view with no overlay.
        The caller guarantees no state other than `view` (and views derived from it, whose
        overlays cover these rows) is being read."""
        if view.rows is None:
            return view
        with self.lock:
            self.base[view.rows] = view.vals
        return TableView(self)


class TableView:
    """An immutable table value: the base plus a sorted overlay of rows that differ from it."""

    __slots__ = ("store", "rows", "vals")

    def __init__(self, store: TableStore, rows: np.ndarray | None = None, vals: np.ndarray | None = None) -> None:
        self.store = store
        self.rows = rows  # sorted unique int64, or None for no overlay
        self.vals = vals

    @property
    def shape(self) -> tuple[int, ...]:
        return self.store.base.shape

    @property
    def dtype(self) -> np.dtype:
        return self.store.base.dtype

    @property
    def overlay_rows(self) -> int:
        return 0 if self.rows is None else len(self.rows)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (any shape; negative counts from the end, like ONNX Gather) ->
        ids.shape + row shape. InvalidArgument on an index out of range."""
        base = self.store.base
        n = base.shape[0]
        try:
            out = base.take(ids, axis=0)
        except IndexError:
            flat = np.asarray(ids).reshape(-1)
            bad = flat[(flat < -n) | (flat >= n)]
            raise InvalidArgument(f"index {int(bad[0]) if len(bad) else '?'} is out of range for a table of {n} rows "
                                  f"(expected -{n} <= index < {n})") from None
        rows = self.rows
        if rows is not None:
            flat = np.asarray(ids, dtype=np.int64).reshape(-1)
            if flat.size:
                flat = np.where(flat < 0, flat + n, flat)
                pos = np.minimum(np.searchsorted(rows, flat), len(rows) - 1)
                hit = rows[pos] == flat
                if hit.any():
                    out.reshape(flat.size, *base.shape[1:])[hit] = self.vals[pos[hit]]
        return out

    def with_rows(self, rows: np.ndarray, vals: np.ndarray) -> "TableView":
        """A new view: this one with `rows` (unique) set to `vals`. Cost: the overlay, not the table."""
        order = np.argsort(rows, kind="stable")
        rows, vals = rows[order], vals[order]
        if self.rows is None:
            return TableView(self.store, rows, vals)
        keep = ~np.isin(self.rows, rows, assume_unique=True)
        merged_rows = np.concatenate([self.rows[keep], rows])
        merged_vals = np.concatenate([self.vals[keep], vals])
        order = np.argsort(merged_rows, kind="stable")
        return TableView(self.store, merged_rows[order], merged_vals[order])

    def materialize(self) -> np.ndarray:
        """A full copy (compaction, export): the base with the overlay written."""
        out = self.store.base.copy()
        if self.rows is not None:
            out[self.rows] = self.vals
        return out


Value = Union[np.ndarray, TableView]


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.require(arr, requirements="C")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True)
class Undo:
    """What a delta overwrote, to go back one revision: whole old values (dense: the old array
    itself, shared, not copied) or the old values of the rows it wrote (tables)."""

    whole: dict[str, Value] = field(default_factory=dict)
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes + v.nbytes for r, v in self.rows.values())


class ParamState:
    """The updatable tensors of one revision (immutable; shares every untouched tensor)."""

    __slots__ = ("tensors", "extra")

    def __init__(self, tensors: Mapping[str, Value], extra: object = None) -> None:
        self.tensors = dict(tensors)
        self.extra = extra  # the runtime's per-state object (an ONNX session for changed dense tensors)

    def value(self, name: str) -> np.ndarray:
        v = self.tensors[name]
        return v.materialize() if isinstance(v, TableView) else v

    def rows_of(self, name: str, rows: np.ndarray) -> np.ndarray:
        v = self.tensors[name]
        return v.take(rows) if isinstance(v, TableView) else np.asarray(v)[rows]

    def overlay_rows(self) -> int:
        return sum(v.overlay_rows for v in self.tensors.values() if isinstance(v, TableView))


# -- validation ----------------------------------------------------------------------------
def validate(specs: Mapping[str, ParamSpec], updates: list[Update]) -> list[Update]:
    """Check every update against the specs (whole delta first: nothing is built from a delta
    with one bad update); returns them with values cast to the tensor's dtype and rows as int64.
    NotFound for an unknown tensor, InvalidArgument for anything else wrong."""
    if not updates:
        raise InvalidArgument("the delta has no updates; expected at least one tensor")
    seen: set[str] = set()
    out = []
    for u in updates:
        spec = specs.get(u.name)
        if spec is None:
            known = ", ".join(sorted(specs)[:20]) or "none"
            raise NotFound(f"unknown tensor {u.name!r}: this version's updatable tensors are {known}"
                           + (" ..." if len(specs) > 20 else ""))
        if u.name in seen:
            raise InvalidArgument(f"tensor {u.name!r} appears twice in the delta; merge its updates into one")
        seen.add(u.name)
        values = np.asarray(u.values)
        if values.dtype.kind not in "fiub" or (values.dtype.kind != spec.dtype.kind and not
                                                  (spec.dtype.kind == "f" and values.dtype.kind in "iu")):
            raise InvalidArgument(f"tensor {u.name!r}: values have dtype {values.dtype.name}, expected {spec.dtype.name}")
        if u.rows is None:
            if tuple(values.shape) != spec.shape:
                raise InvalidArgument(f"tensor {u.name!r}: values have shape {list(values.shape)}, expected "
                                      f"{list(spec.shape)} (the whole tensor; send rows to update part of it)")
            out.append(Update(u.name, values.astype(spec.dtype, copy=False)))
            continue
        if not spec.shape:
            raise InvalidArgument(f"tensor {u.name!r} is a scalar; it has no rows to update, send its whole value")
        rows = np.asarray(u.rows)
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise InvalidArgument(f"tensor {u.name!r}: rows must be a list of integer row indices, got "
                                  f"{rows.dtype.name} of shape {list(rows.shape)}")
        rows = rows.astype(np.int64, copy=False)
        if rows.size == 0:
            raise InvalidArgument(f"tensor {u.name!r}: rows is empty; name at least one row")
        n = spec.shape[0]
        bad = rows[(rows < 0) | (rows >= n)]
        if bad.size:
            raise InvalidArgument(f"tensor {u.name!r}: row {int(bad[0])} is out of range; it has {n} rows (0..{n - 1})")
        if np.unique(rows).size != rows.size:
            srt = np.sort(rows)
            dup = srt[1:][srt[1:] == srt[:-1]]
            raise InvalidArgument(f"tensor {u.name!r}: row {int(dup[0])} appears more than once; each row once per delta")
        want = (len(rows), *spec.shape[1:])
        if tuple(values.shape) != want:
            raise InvalidArgument(f"tensor {u.name!r}: values for {len(rows)} row(s) have shape {list(values.shape)}, "
                                  f"expected {list(want)}")
        out.append(Update(u.name, values.astype(spec.dtype, copy=False), rows))
    return out


# -- building the next state -----------------------------------------------------------------
def apply(state: ParamState, updates: list[Update]) -> tuple[dict[str, Value], Undo]:
    """The tensors of the next state (validated updates applied copy-on-write) and the undo.
    Only touched tensors are new; for tables only the overlay is."""
    tensors = dict(state.tensors)
    undo = Undo()
    for u in updates:
        cur = tensors[u.name]
        if u.rows is None:
            undo.whole[u.name] = cur
            if isinstance(cur, TableView):
                tensors[u.name] = TableView(TableStore(np.array(u.values, copy=True)))
            else:
                tensors[u.name] = _frozen(np.array(u.values, copy=True))
            continue
        undo.rows[u.name] = (u.rows, state.rows_of(u.name, u.rows))
        if isinstance(cur, TableView):
            tensors[u.name] = cur.with_rows(u.rows, np.array(u.values, copy=True))
        else:
            new = np.array(cur, copy=True)
            new[u.rows] = u.values
            tensors[u.name] = _frozen(new)
    return tensors, undo


def compose_undo(undos: list[Undo]) -> list[Update]:
    """Updates taking the head back through `undos` (newest first) to the revision before the
    last of them: for each row (or tensor), the value from the oldest undo that has it."""
    whole: dict[str, Value] = {}
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for undo in undos:  # newest first: later (older) entries override
        for name, value in undo.whole.items():
            whole[name] = value
            parts.pop(name, None)  # rows undone by newer deltas are covered by this older whole value
        for name, rv in undo.rows.items():
            parts.setdefault(name, []).append(rv)
    out: list[Update] = []
    merged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, rvs in parts.items():
        rows = np.concatenate([r for r, _ in rvs])
        vals = np.concatenate([v for _, v in rvs])
        # The last occurrence of each row is the oldest value: unique over the reversed order.
        uniq, first = np.unique(rows[::-1], return_index=True)
        merged[name] = (uniq, vals[::-1][first])
    for name, value in whole.items():
        arr = value.materialize() if isinstance(value, TableView) else np.array(value, copy=True)
        if name in merged:
            r, v = merged.pop(name)
            arr[r] = v
        out.append(Update(name, arr))
    for name, (r, v) in merged.items():
        out.append(Update(name, v, r))
    return out
