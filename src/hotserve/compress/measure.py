"""Latency of servables on this host, in-process, with the server's thread settings.

Each model is loaded through the server's own runtime loader (`runtimes.registry.load_servable`
with the same intra/inter-op thread counts `hotserve serve --tensorflow_intra_op_parallelism`
would use), so what is measured is what would serve. The models are measured in interleaved
rounds (parent, variant, parent, variant...) so a busy neighbour slows every model alike
instead of whichever happened to run at the wrong moment; p50 and p99 are over all rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from hotserve.runtimes.base import Servable

WARMUP_RUNS = 5


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    runs: int

    def as_dict(self) -> dict:
        return {"p50_ms": round(self.p50_ms, 4), "p99_ms": round(self.p99_ms, 4), "runs": self.runs}


def batch_of(inputs: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` rows of each input (rows repeated when there are fewer)."""
    out = {}
    for name, arr in inputs.items():
        reps = -(-batch // arr.shape[0])
        rows = np.concatenate([arr] * reps, axis=0) if reps > 1 else arr
        out[name] = np.ascontiguousarray(rows[:batch])
    return out


def measure(servables: Mapping[str, Servable], inputs: Mapping[str, np.ndarray], batches: list[int],
            runs: int = 200, rounds: int = 5, max_seconds: float = 60.0) -> dict[str, dict[int, Latency]]:
    """{name: {batch: Latency}} for every servable at every batch size. Stops early (keeping
    whole rounds, at least one) once max_seconds have passed."""
    feeds = {b: batch_of(inputs, b) for b in batches}
    samples: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in servables}
    per_round = max(1, runs // rounds)
    for s in servables.values():
        for b in batches:
            for _ in range(WARMUP_RUNS):
                s.predict(feeds[b])
    deadline = time.perf_counter() + max_seconds
    names = list(servables)
    for r in range(rounds):
        if r and time.perf_counter() > deadline:
            break
        order = names if r % 2 == 0 else list(reversed(names))  # alternate who goes first
        for b in batches:
            for name in order:
                s, feed, out = servables[name], feeds[b], samples[name][b]
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    s.predict(feed)
                    out.append(time.perf_counter() - t0)
    return {n: {b: Latency(float(np.percentile(v, 50)) * 1e3, float(np.percentile(v, 99)) * 1e3, len(v))
                for b, v in per_b.items()} for n, per_b in samples.items()}
