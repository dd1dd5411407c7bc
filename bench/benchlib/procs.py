"""Process bookkeeping: start/stop every server the bench owns, find a server's process tree,
and sample its RSS and CPU from /proc while a load runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")

# Every child the bench started and has not reaped yet; cleanup() stops them all.
_OWNED: list["Owned"] = []
_LOCK = threading.Lock()


class Owned:
    """A child process the bench started, stopped with SIGTERM (then SIGKILL) to its group
    when it runs in its own session, or to itself otherwise."""

    def __init__(self, proc: subprocess.Popen, name: str, own_group: bool, stop_fn=None) -> None:
        self.proc = proc
        self.name = name
        self.own_group = own_group
        self.stop_fn = stop_fn  # e.g. ServerProcess.stop
        with _LOCK:
            _OWNED.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _signal(self, sig: int) -> None:
        try:
            if self.own_group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 15.0) -> None:
        with _LOCK:
            if self in _OWNED:
                _OWNED.remove(self)
        if self.stop_fn is not None:
            try:
                self.stop_fn()
            except Exception:
                pass
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(5)
        if self.own_group:
            # Workers left behind by a supervisor that died first (same process group).
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def cleanup() -> None:
    """Stop every owned process, newest first."""
    while True:
        with _LOCK:
            if not _OWNED:
                return
            owned = _OWNED[-1]
        owned.stop()


from hotserve.launcher import free_port  # noqa: E402,F401  (the benches' servers take it from here)


def tree_pids(root: int) -> list[int]:
    """root and all its descendants (via /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        todo.extend(int(c) for c in f.read().split())
                except OSError:
                    pass
        except OSError:
            pass
    return out


def rss_bytes(pids: list[int]) -> int:
    """Summed RSS of a process tree (hotserve's own reader, per pid)."""
    from hotserve.observability.process import rss_of

    return sum(rss_of(pid) for pid in pids)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / _TICK


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of pid, by thread id."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, IndexError, ValueError):
            pass  # the thread ended
    return out


def pin_tree(root: int, cpus: set[int]) -> None:
    """Pin every thread of root's process tree to cpus (threads and processes created later
    inherit the affinity of their creator)."""
    for pid in tree_pids(root):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    os.sched_setaffinity(int(tid), cpus)
                except OSError:
                    pass
        except OSError:
            pass


class Sampler(threading.Thread):
    """Samples the RSS (sum over the tree) of a server every `interval` seconds; the peak
    and the CPU seconds used by the tree between start() and finish() are kept."""

    def __init__(self, root: int, interval: float = 0.2, cpus: set[int] | None = None) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.cpus = cpus
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()
        self._cpu0 = cpu_seconds(tree_pids(root))
        self._t0 = time.monotonic()
        self.cpu_s = 0.0
        self.wall_s = 0.0

    def run(self) -> None:
        if self.cpus:
            try:
                os.sched_setaffinity(0, self.cpus)  # this thread only
            except OSError:
                pass
        while not self._halt.is_set():
            self.peak = max(self.peak, rss_bytes(tree_pids(self.root)))
            self.samples += 1
            self._halt.wait(self.interval)

    def finish(self) -> "Sampler":
        self._halt.set()
        self.join(5)
        pids = tree_pids(self.root)
        self.peak = max(self.peak, rss_bytes(pids))
        self.cpu_s = cpu_seconds(pids) - self._cpu0
        self.wall_s = time.monotonic() - self._t0
        return self

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else float("nan")
