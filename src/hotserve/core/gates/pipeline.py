"""Gates: the checks a version passes before it may receive traffic, as a pipeline of Gate
objects. Each gate returns a report (what it checked, what it measured) or raises LoadError;
every verdict is published as a GateResult event and kept in the version's status, so a
failure is visible in status, logs, metrics and the dashboard alike (invariant 2).

Gates run in two stages: `files` gates check the version's local copy before a runtime touches
it (the manifest's digests), `servable` gates run on the loaded servable (validation,
warm-up, golden outputs, accuracy). A gate decides for itself whether it applies (a version
without a warmup.json has nothing to replay).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from hotserve.errors import HotserveError, LoadError
from hotserve.observability.events import BUS, EventBus, GateResult
from hotserve.runtimes.base import Servable

FILES = "files"
SERVABLE = "servable"


@dataclass
class GateContext:
    model: str
    version: int
    local_dir: str  # the version's files on this machine (the store's copy for remote stores)
    published: bool  # carries a manifest (hotserve publish); hand copies have none
    manifest: dict | None = None  # parsed by the manifest gate; lineage and gate requests live here
    servable: Servable | None = None  # set for the servable stage
    extra: dict[str, Any] = field(default_factory=dict)  # what one gate leaves for a later one
    # Another version of the same model as a local directory (e.g. the parent an accuracy gate
    # compares with); None where the loader cannot reach siblings.
    sibling_dir: Callable[[int], str] | None = None


class Gate(Protocol):
    name: str
    stage: str  # FILES or SERVABLE

    def applies(self, ctx: GateContext) -> bool:
        ...

    def run(self, ctx: GateContext) -> dict[str, Any]:
        """The report; raise LoadError (with a message saying what failed and why) to refuse."""


class GatePipeline:
    def __init__(self, gates: list[Gate], bus: EventBus = BUS) -> None:
        self.gates = list(gates)
        self.bus = bus

    def run(self, ctx: GateContext, stage: str) -> list[dict[str, Any]]:
        """Run this stage's gates in order; the reports of those that ran. The first failure
        is published and raised as LoadError."""
        reports = []
        for gate in self.gates:
            if gate.stage != stage or not gate.applies(ctx):
                continue
            t0 = time.perf_counter()
            try:
                report = gate.run(ctx) or {}
            except Exception as exc:
                seconds = time.perf_counter() - t0
                err = exc if isinstance(exc, LoadError) else LoadError(
                    f"gate {gate.name}: {exc}" if isinstance(exc, HotserveError) else f"gate {gate.name}: {type(exc).__name__}: {exc}")
                self.bus.publish(GateResult(ctx.model, ctx.version, gate.name, False, seconds, {}, str(err)))
                raise err from exc
            seconds = time.perf_counter() - t0
            self.bus.publish(GateResult(ctx.model, ctx.version, gate.name, True, seconds, dict(report)))
            reports.append({"gate": gate.name, "passed": True, "seconds": round(seconds, 6), **report})
        return reports
