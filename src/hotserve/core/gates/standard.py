"""The gates every version passes: manifest digests, validation on synthesized inputs, the
runtime's own warm-up requests, warmup.json and golden.json, and the accuracy gate for versions
whose manifest asks for it."""

from __future__ import annotations

from typing import Any

from hotserve.core.gates import files
from hotserve.core.gates.accuracy import AccuracyGate
from hotserve.core.gates.pipeline import FILES, SERVABLE, Gate, GateContext
from hotserve.core.gates.validation import validate, warm_up
from hotserve.repository import manifest


class ManifestGate:
    """A published version's files match its manifest's sizes and sha256 digests."""

    name = "manifest"
    stage = FILES

    def applies(self, ctx: GateContext) -> bool:
        return ctx.published

    def run(self, ctx: GateContext) -> dict[str, Any]:
        doc = manifest.verify(ctx.local_dir)
        ctx.manifest = doc
        return {"files": len(doc["files"]), "bytes": sum(e["size"] for e in doc["files"])}


class ValidationGate:
    """One inference per signature on inputs synthesized from it; every output comes back."""

    name = "validation"
    stage = SERVABLE

    def applies(self, ctx: GateContext) -> bool:
        return True

    def run(self, ctx: GateContext) -> dict[str, Any]:
        validate(ctx.servable)
        return {"signatures": len(ctx.servable.signatures)}


class RuntimeWarmupGate:
    """The model's own warm-up requests (TF Serving's assets.extra/tf_serving_warmup_requests)."""

    name = "warmup"
    stage = SERVABLE

    def applies(self, ctx: GateContext) -> bool:
        return getattr(ctx.servable, "warmup_requests", None) is not None

    def run(self, ctx: GateContext) -> dict[str, Any]:
        return {"requests": warm_up(ctx.servable)}


class _FileGate:
    """A gate a version opts into with a file in its directory (TF Serving REST request bodies,
    read with the injected decoder)."""

    name = ""
    stage = SERVABLE
    file = ""

    def __init__(self, decoder: files.RequestDecoder) -> None:
        self.decoder = decoder

    def applies(self, ctx: GateContext) -> bool:
        return files.has_file(ctx.local_dir, self.file)


class WarmupFileGate(_FileGate):
    name, file = "warmup_file", files.WARMUP_FILE

    def run(self, ctx: GateContext) -> dict[str, Any]:
        requests, runs, _ = files.run_warmup_file(ctx.servable, ctx.local_dir, self.decoder)
        return {"requests": requests, "runs": runs}


class GoldenFileGate(_FileGate):
    name, file = "golden", files.GOLDEN_FILE

    def run(self, ctx: GateContext) -> dict[str, Any]:
        cases, _ = files.run_golden_file(ctx.servable, ctx.local_dir, self.decoder)
        return {"cases": cases}


def standard_gates(decoder: files.RequestDecoder | None) -> list[Gate]:
    """Manifest, validation, runtime warm-up, (given a request decoder) the file gates, then
    the accuracy gate (last: it is the most expensive, and only manifests asking for it run it)."""
    gates: list[Gate] = [ManifestGate(), ValidationGate(), RuntimeWarmupGate()]
    if decoder is not None:
        gates += [WarmupFileGate(decoder), GoldenFileGate(decoder)]
    gates.append(AccuracyGate())
    return gates
