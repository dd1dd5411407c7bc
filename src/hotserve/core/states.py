"""Version lifecycle states, named as TF Serving names them in ModelVersionStatus."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

from hotserve.errors import Code


class VersionState(str, Enum):
    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass
class VersionStatus:
    version: int
    state: VersionState = VersionState.START
    error_code: Code = Code.OK
    error_message: str = ""
    fingerprint: tuple = ()
    since: float = field(default_factory=time.time)
    load_seconds: float | None = None
    size_bytes: int = 0

    def set(self, state: VersionState, error_code: Code = Code.OK, error_message: str = "") -> None:
        self.state = state
        self.error_code = error_code
        self.error_message = error_message
        self.since = time.time()
