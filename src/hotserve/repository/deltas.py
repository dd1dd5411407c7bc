"""Parameter deltas on disk: the log of a version's revisions, under `<version>/deltas/`.

Each entry is two objects, written through Storage:

    deltas/00000007-<token>.safetensors   the updates (tensors NAME, or NAME.rows + NAME.values)
    deltas/00000007.json                  the commit: sequence number, kind, revision, parent,
                                          the data object's size and sha256, what it touched

The data object is written first; the commit is created last and only if no other writer took
that sequence number (`Storage.create_new`: a link locally, a conditional PUT on S3), so two
servers (workers, fleet replicas, the learner) never both write entry 7, and a reader sees an
entry only once it is complete. An entry is either a delta (a new revision whose parent is the
revision it was built on) or a rollback (the served revision becomes an earlier one; no new
revision). Revisions are numbered by the log: a new delta takes the highest revision seen + 1.

Readers list `deltas/` and read only the commits past the last sequence number they applied;
the scanner keeps deltas out of a version's fingerprint (a delta is not a new version).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from hotserve.repository.storage import Storage, StorageUnavailable

DELTAS_DIR = "deltas"
FORMAT = "hotserve-delta/1"
_COMMIT = re.compile(r"^(\d{8})\.json$")


class DeltaLogError(Exception):
    """An entry that cannot be read or does not match its commit (corrupt, truncated)."""


def commit_seq(name: str) -> int | None:
    """The sequence number of a commit object's file name (else None)."""
    m = _COMMIT.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str  # delta | rollback
    revision: int  # delta: the new revision; rollback: the revision served from now on
    parent: int  # delta: the revision it was built on; rollback: the revision served before
    data: str = ""
    size: int = 0
    sha256: str = ""
    time: float = 0.0
    source: str = ""
    tensors: tuple[str, ...] = ()
    rows: int = 0
    nbytes: int = 0
    doc: dict = field(default_factory=dict, compare=False)

    def info(self) -> dict:
        """What status and metadata show of this entry."""
        out = {"revision": self.revision, "parent": self.parent, "kind": self.kind, "time": self.time,
               "source": self.source, "seq": self.seq}
        if self.kind == "delta":
            out.update(tensors=list(self.tensors), rows=self.rows, bytes=self.nbytes)
        return out


def encode_updates(updates) -> bytes:
    """Updates as one safetensors object: NAME for a whole tensor, NAME.rows + NAME.values for rows."""
    from safetensors.numpy import save

    tensors = {}
    for u in updates:
        if u.rows is None:
            tensors[u.name] = np.require(u.values, requirements="C")
        else:
            tensors[f"{u.name}.rows"] = np.require(u.rows, np.int64, "C")
            tensors[f"{u.name}.values"] = np.require(u.values, requirements="C")
    return save(tensors)


def decode_updates(data: bytes) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """The inverse of encode_updates: (name, values, rows or None) per tensor (ValueError on
    bytes that are not safetensors)."""
    from safetensors.numpy import load

    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ValueError(f"not a safetensors object: {exc}") from None
    updates = []
    used: set[str] = set()
    for key in sorted(tensors):
        if key.endswith(".rows") and key[:-5] + ".values" in tensors:
            name = key[:-5]
            updates.append((name, tensors[name + ".values"], tensors[key]))
            used.update((key, name + ".values"))
    for key in sorted(tensors):
        if key not in used:
            updates.append((key, tensors[key], None))
    return updates


class DeltaLog:
    """One version's delta log in the store."""

    def __init__(self, storage: Storage, version_path: str) -> None:
        self.storage = storage
        self.version_path = version_path
        self.dir = storage.join(version_path, DELTAS_DIR)

    def commits(self) -> list[int]:
        """Sequence numbers of the committed entries, sorted (one listing of deltas/)."""
        try:
            names = self.storage.list_entries(self.dir)
        except (FileNotFoundError, StorageUnavailable):
            if not self.storage.exists(self.dir):
                return []
            raise
        return sorted(s for s in (commit_seq(n) for n, is_dir in names if not is_dir) if s is not None)

    def entry(self, seq: int) -> Entry:
        path = self.storage.join(self.dir, f"{seq:08d}.json")
        try:
            doc = json.loads(self.storage.read_bytes(path))
            return Entry(seq, doc["kind"], int(doc["revision"]), int(doc["parent"]), doc.get("data", ""),
                         int(doc.get("size", 0)), doc.get("sha256", ""), float(doc.get("time", 0.0)),
                         str(doc.get("source", "")), tuple(doc.get("tensors", ())), int(doc.get("rows", 0)),
                         int(doc.get("bytes", 0)), doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise DeltaLogError(f"{path}: malformed delta commit ({exc})") from None

    def entries_after(self, seq: int) -> list[Entry]:
        return [self.entry(s) for s in self.commits() if s > seq]

    def read_updates(self, entry: Entry) -> list:
        path = self.storage.join(self.dir, entry.data)
        data = self.storage.read_bytes(path)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise DeltaLogError(f"{path}: {len(data)} bytes with sha256 {hashlib.sha256(data).hexdigest()[:16]}..., "
                                f"its commit says {entry.size} bytes, {entry.sha256[:16]}... (corrupt or changed)")
        try:
            return decode_updates(data)
        except ValueError as exc:
            raise DeltaLogError(f"{path}: {exc}") from None

    def append(self, seq: int, kind: str, revision: int, parent: int, payload: bytes | None = None,
               source: str = "", tensors: tuple[str, ...] = (), rows: int = 0, nbytes: int = 0,
               extra: dict | None = None) -> Entry | None:
        """Write entry `seq` (data, then the commit); None if another writer committed `seq` first
        (its data object is removed again). Durable on return."""
        self.storage.makedirs(self.dir)
        doc = {"format": FORMAT, "seq": seq, "kind": kind, "revision": revision, "parent": parent,
               "time": time.time(), "source": source, **(extra or {})}
        data_path = None
        if payload is not None:
            data = f"{seq:08d}-{uuid.uuid4().hex[:8]}.safetensors"
            data_path = self.storage.join(self.dir, data)
            self.storage.write_bytes(data_path, payload)
            doc.update(data=data, size=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                       tensors=list(tensors), rows=rows, bytes=nbytes)
        if not self.storage.create_new(self.storage.join(self.dir, f"{seq:08d}.json"), json.dumps(doc).encode()):
            if data_path is not None:
                self.storage.remove_tree(data_path)
            return None
        return Entry(seq, kind, revision, parent, doc.get("data", ""), doc.get("size", 0), doc.get("sha256", ""),
                     doc["time"], source, tuple(tensors), rows, nbytes, doc)


def chain_to(entries: list[Entry], head: int | None = None) -> tuple[int, list[Entry]]:
    """Resolve a log: the revision it serves at the end (or `head`) and the delta entries from
    revision 0 to it, in order (branches abandoned by rollbacks and the rollbacks left out)."""
    by_rev = {e.revision: e for e in entries if e.kind == "delta"}
    served = 0
    for e in entries:
        served = e.revision
    target = served if head is None else head
    chain = []
    rev = target
    while rev != 0:
        e = by_rev.get(rev)
        if e is None:
            raise DeltaLogError(f"revision {rev} is not in the log (its entry is missing)")
        chain.append(e)
        rev = e.parent
        if len(chain) > len(by_rev):
            raise DeltaLogError("the log's parent links form a cycle")
    return target, chain[::-1]
