"""The serving shape: how many worker processes, how many threads per inference, whether cheap
models run on the event loop, and how many requests a model runs at once, chosen at start from
the machine (usable cores, available memory) and the models (their size on disk).

The rule is to fit the cores without oversubscribing them: on a machine with N usable cores,
N worker processes (each a full server sharing the ports with SO_REUSEPORT) with one intra-op
thread each, and inference of a measured-cheap model on the event loop (no thread hop). A
worker holds its own copy of every model, so when N copies would not fit in half the available
memory, fewer workers. Every choice is overridden by its flag; what was chosen, and why, goes
to the log and to every model's metadata (`GET /v1/models/<m>/metadata`, field "serving_shape"
beside "signature_def").
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

from hotserve.core.config import ModelConfig

log = logging.getLogger("hotserve.server")

MAX_AUTO_WORKERS = 4  # beyond this, more processes mostly cost memory on the machines this targets
MEMORY_SHARE = 0.5  # copies of the models may take at most this share of available memory


@dataclass(frozen=True)
class Shape:
    workers: int
    intra_op_threads: int
    inter_op_threads: int
    inference_threading: str  # auto | pool
    max_concurrent_requests: int  # per model, per worker
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str:
        threading = ("cheap models on the event loop (--inference_threading=auto)" if self.inference_threading == "auto"
                     else "every inference in its model's threads (--inference_threading=pool)")
        return (f"{self.workers} worker process(es), {self.intra_op_threads} intra-op thread(s) each, {threading}, "
                f"{self.max_concurrent_requests} concurrent request(s) per model per worker; " + "; ".join(self.reasons))

    def doc(self) -> dict:
        return asdict(self)


def usable_cores() -> int:
    """Cores this process may run on: the affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def model_bytes(models: list[ModelConfig]) -> int | None:
    """Bytes of the newest version of every model with a local repository (None if any is
    remote or unreadable: then nothing is known)."""
    total = 0
    for m in models:
        base = m.base_path[len("file://"):] if m.base_path.startswith("file://") else m.base_path
        if "://" in base:
            return None
        try:
            versions = [int(n) for n in os.listdir(base) if n.isdigit()]
        except OSError:
            return None
        if not versions:
            continue
        newest = os.path.join(base, str(max(versions)))
        for root, _, files in os.walk(newest):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:
                    pass
    return total


def choose(models: list[ModelConfig], workers: int = 0, intra_op: int | None = None, inter_op: int = 0,
           inference_threading: str | None = None, max_concurrent: int = 0, cores: int | None = None,
           memory: int | None = None, size: int | None = None) -> Shape:
    """The shape for these models on this machine; explicit arguments (the flags) win."""
    cores = cores or usable_cores()
    memory = available_memory() if memory is None else memory
    size = model_bytes(models) if size is None else size
    reasons = []
    if workers:
        reasons.append(f"--num_workers {workers}")
    else:
        workers = min(cores, MAX_AUTO_WORKERS)
        why = f"{cores} usable core(s)"
        if size is not None and memory and workers > 1:
            fit = int(MEMORY_SHARE * memory // max(size, 1))
            if fit < workers:
                workers = max(1, fit)
                why += (f"; {workers} copy(ies) of the models ({size / 2**20:.0f} MiB) fit in half of the "
                        f"{memory / 2**30:.1f} GiB available")
            else:
                why += f", models {size / 2**20:.1f} MiB"
        reasons.append(f"workers: {why}")
    if intra_op is None:
        intra_op = max(1, cores // workers)
        reasons.append(f"intra-op threads: {cores} core(s) / {workers} worker(s)")
    threading = inference_threading or "auto"
    if not max_concurrent:
        # TF Serving's request threads (4 x cores), shared out among the workers. A cheap model
        # runs on the event loop and uses none; these are for models slow enough to hop.
        max_concurrent = max(2, 4 * cores // workers)
    return Shape(workers, intra_op, inter_op, threading, max_concurrent, reasons)
