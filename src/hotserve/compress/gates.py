"""The two gates a variant passes before it may be published: its metric is not more than
--max_metric_drop worse than its parent's on the same data, and it is at least --min_speedup
times faster (p50 at the larger measured batch) on this host. A refusal names the gate and the
numbers."""

from __future__ import annotations

from dataclasses import dataclass

from hotserve.core.gates.accuracy import drop


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]  # one per failed gate

    def summary(self) -> str:
        return "pass" if self.passed else "refused: " + "; ".join(self.reasons)


def accuracy_gate(metric: str, parent: float, variant: float, max_drop: float) -> str | None:
    d = drop(metric, parent, variant)
    if d > max_drop + 1e-12:
        return (f"accuracy gate: {metric} {variant:.4f} vs parent {parent:.4f}, a drop of {d:.4f} "
                f"> --max_metric_drop {max_drop:g}")
    return None


def speed_gate(speedup: float, parent_ms: float, variant_ms: float, batch: int, min_speedup: float) -> str | None:
    if speedup < min_speedup:
        return (f"speed gate: {speedup:.2f}x (p50 at batch {batch}: parent {parent_ms:.3f} ms, variant "
                f"{variant_ms:.3f} ms) < --min_speedup {min_speedup:g}")
    return None


def judge(metric: str, parent: float, variant: float, max_drop: float, speedup: float, parent_ms: float,
          variant_ms: float, batch: int, min_speedup: float) -> Verdict:
    reasons = [r for r in (accuracy_gate(metric, parent, variant, max_drop),
                           speed_gate(speedup, parent_ms, variant_ms, batch, min_speedup)) if r]
    return Verdict(not reasons, tuple(reasons))
