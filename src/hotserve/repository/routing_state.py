"""Routing decisions an operator or the canary analysis made (labels, pin, rolled-back versions),
kept beside the versions so that a restarted server comes back to the same served versions and
labels: the repository stays the source of truth.

The file starts with a dot, so the scanner ignores it; it is written atomically (temp + rename).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field

log = logging.getLogger("hotserve.repository")

STATE_FILE = ".hotserve_routing.json"


@dataclass
class RoutingState:
    labels: dict[str, int] = field(default_factory=dict)
    pinned: int | None = None
    # version -> fingerprint it had when rolled back; a changed directory may serve again
    rolled_back: dict[int, tuple] = field(default_factory=dict)
    canary_weight: float | None = None
    unloaded: bool = False  # an operator unloaded the model (Triton repository API)


def _fp_to_json(fp: tuple) -> list:
    return [list(x) for x in fp]


def _fp_from_json(raw: list) -> tuple:
    return tuple(tuple(x) for x in raw)


def load(base_path: str) -> RoutingState | None:
    path = os.path.join(base_path, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        return RoutingState(
            labels={str(k): int(v) for k, v in doc.get("labels", {}).items()},
            pinned=doc.get("pinned"),
            rolled_back={int(k): _fp_from_json(v) for k, v in doc.get("rolled_back", {}).items()},
            canary_weight=doc.get("canary_weight"),
            unloaded=bool(doc.get("unloaded", False)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable routing state %s: %s", path, exc)
        return None


def save(base_path: str, state: RoutingState) -> None:
    doc = {
        "labels": state.labels,
        "pinned": state.pinned,
        "rolled_back": {str(v): _fp_to_json(fp) for v, fp in state.rolled_back.items()},
        "canary_weight": state.canary_weight,
        "unloaded": state.unloaded,
    }
    try:
        fd, tmp = tempfile.mkstemp(prefix=".hotserve_routing.", dir=base_path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(base_path, STATE_FILE))
    except OSError as exc:
        # A read-only repository still serves; the decision just will not survive a restart.
        log.warning("cannot persist routing state in %s (%s); it will not survive a restart", base_path, exc)


def stamp(base_path: str) -> tuple[int, int] | None:
    """(mtime_ns, size) of the state file, to notice when another process changed it."""
    try:
        st = os.stat(os.path.join(base_path, STATE_FILE))
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None
