#!/usr/bin/env python3
"""Load isolation: what loading a large model does to another model's p99 latency.

    python bench/load_isolation.py                     # ~2 min: baseline, big load, CPU-hog control, big loaded
    python bench/load_isolation.py --phase-seconds 5   # short smoke run
    python bench/load_isolation.py --variants intra-op-1   # + the same on a server with one onnxruntime thread per session

One hotserve server serves `small` (MLP 784-256-256-10) and `big` (an MLP of >= 500 MB of
weights, generated here). wrk keeps `small` busy (REST TFS JSON, batch 1) in every phase; the
bench records every request's start and end (bench/wrk/swap.lua) and takes small's p99 over
exactly one window per phase:

  baseline          nothing else happening; window = the same offset and length as the load window
  big load          big v1 is published (renamed into big's base path) during the load; window =
                    publish -> big AVAILABLE (GET /v1/models/big polled)
  CPU hog           a separate, unpinned process spinning a pure-Python loop for as long as the
                    load took: what sharing the two cores with a busy thread explains; window = the hog's loop
  baseline, big loaded   like baseline, with big loaded and idle

Read the ratio column: big-load p99 / baseline p99 against CPU-hog p99 / baseline p99. See
bench/README.md ("Load isolation"). Writes bench/results/load_isolation.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

from benchlib import loadgen, procs, report, session, tools  # noqa: E402
from benchlib.loadgen import percentile  # noqa: E402

SMALL_SIZES = (784, 256, 256, 10)
DEFAULT_BIG_SIZES = "784,16384,8192,10"  # ~590 MB of float32 weights
MIN_BIG_BYTES = 500 * 10**6
TAIL_S = 1.0  # wrk keeps running at least this long after the window of interest ends
ONNX_PROTOBUF_LIMIT = 2**31 - 1  # a single-file ONNX model (no external data) must stay below 2 GB

VARIANTS = {
    # name: (label, extra server flags)
    "intra-op-1": ("intra-op 1", ["--tensorflow_intra_op_parallelism", "1"]),
}

# The CPU hog: a separate process, on any core (it undoes the affinity it inherits from the
# bench's pinned thread), spinning pure Python for argv[1] seconds. It prints the monotonic
# start and end of its loop and the CPU seconds it used.
HOG_CODE = r"""
import os, sys, time
os.sched_setaffinity(0, range(os.cpu_count() or 1))
seconds = float(sys.argv[1])
c0 = time.process_time()
t0 = time.monotonic()
end = t0 + seconds
x = 0
while time.monotonic() < end:
    for _ in range(20000):
        x += 1
t1 = time.monotonic()
print(f"{t0:.6f} {t1:.6f} {time.process_time() - c0:.3f}", flush=True)
"""


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/load_isolation.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase-seconds", type=float, default=15.0, help="wrk run per phase (default 15; whole seconds)")
    p.add_argument("--lead-seconds", type=float, default=2.0,
                   help="seconds into each phase at which the big load / the hog starts (default 2)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk run before the first phase of each server (default 2)")
    p.add_argument("--concurrency", type=int, default=8, help="wrk connections on small, one wrk thread each (default 8)")
    p.add_argument("--big-sizes", default=DEFAULT_BIG_SIZES,
                   help=f"layer sizes of the big MLP (default {DEFAULT_BIG_SIZES}, ~590 MB; must stay under ONNX's 2 GB)")
    p.add_argument("--hog-procs", type=int, default=1,
                   help="CPU-hog processes in the control phase (default 1: the load pool has one thread)")
    p.add_argument("--variants", default="",
                   help="comma list of extra server configurations, each measured like the default one on a fresh "
                        "server: " + ", ".join(f"{k} ({' '.join(v[1])})" for k, v in VARIANTS.items()))
    p.add_argument("--poll-interval", type=float, default=0.1,
                   help="seconds between GET /v1/models/big polls, in every phase (default 0.1)")
    p.add_argument("--load-timeout", type=float, default=180.0, help="give up on big becoming AVAILABLE after this long (default 180)")
    p.add_argument("--py-spy", nargs="?", const="py-spy", default="",
                   help="dump the server's threads with `py-spy dump --nonblocking` every --py-spy-interval s during the big load "
                        "(where the load thread is, who holds the GIL); optional path to py-spy (pip install py-spy). "
                        "py-spy runs on the client core beside wrk: leave it off for the numbers")
    p.add_argument("--py-spy-interval", type=float, default=0.25, help="seconds between py-spy dumps (default 0.25)")
    p.add_argument("--client-cpus", default="1", help="CPU list wrk and the bench's own threads are pinned to (default 1)")
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk/taskset; fail instead")
    p.add_argument("--results-dir", default=os.path.join(BENCH_DIR, "results"), help="where load_isolation.json/.md go")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory (models, server logs, per-request logs)")
    o = p.parse_args(argv)
    o.big_sizes = tuple(_ints(o.big_sizes))
    if len(o.big_sizes) < 2 or o.big_sizes[0] != SMALL_SIZES[0]:
        p.error(f"--big-sizes needs at least an input and an output size, starting with {SMALL_SIZES[0]}")
    weights = sum(a * b + b for a, b in zip(o.big_sizes[:-1], o.big_sizes[1:])) * 4
    if weights >= ONNX_PROTOBUF_LIMIT - 2**20:
        p.error(f"--big-sizes {o.big_sizes}: {weights / 2**20:.0f} MiB of weights, over ONNX's 2 GB protobuf limit")
    o.variants = [v.strip() for v in o.variants.split(",") if v.strip()]
    bad = [v for v in o.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; choose from {','.join(VARIANTS)}")
    if o.phase_seconds < 3 or o.lead_seconds < 0.5 or o.lead_seconds >= o.phase_seconds - 1:
        p.error("--phase-seconds must be >= 3 and --lead-seconds between 0.5 and phase-seconds - 1")
    if o.concurrency < 1 or o.hog_procs < 1 or o.poll_interval <= 0:
        p.error("--concurrency, --hog-procs must be >= 1 and --poll-interval > 0")
    ncpu = os.cpu_count() or 1
    if any(c >= ncpu for c in _ints(o.client_cpus)):
        p.error(f"--client-cpus {o.client_cpus} names a CPU this machine does not have (it has {ncpu})")
    o.client_cpu_set = set(_ints(o.client_cpus))
    if o.py_spy:
        exe = shutil.which(o.py_spy) or shutil.which(o.py_spy, path=os.path.dirname(sys.executable))
        if not exe:
            p.error(f"--py-spy: {o.py_spy} not found (pip install py-spy into this venv)")
        o.py_spy = exe
    return o


# -- small helpers ---------------------------------------------------------------------------


def _pin_self(cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(0, cpus)  # this thread only
    except OSError:
        pass


def _get_json(url: str, timeout: float = 5.0) -> tuple[int, dict | None]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def busiest_threads(before: dict[int, float], after: dict[int, float], seconds: float) -> dict:
    """Per-thread CPU over a window: the busiest thread (during a load: the load thread) and how
    many threads used more than half a core."""
    deltas = sorted(((after[t] - before.get(t, 0.0)) for t in after), reverse=True)
    if not deltas or seconds <= 0:
        return {}
    return {"busiest_thread_cpu_pct": 100.0 * deltas[0] / seconds,
            "second_thread_cpu_pct": 100.0 * deltas[1] / seconds if len(deltas) > 1 else 0.0,
            "threads_over_half_core": sum(1 for d in deltas if d / seconds > 0.5),
            "threads_started": sum(1 for t in after if t not in before)}


def _state(doc: dict | None, version: int = 1) -> str:
    for st in (doc or {}).get("model_version_status", []):
        if st.get("version") == str(version):
            return st.get("state", "?")
    return "-"


# -- server -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Hotserve:
    sp: object  # hotserve.launcher.ServerProcess
    owned: procs.Owned
    log_path: str

    @property
    def url(self) -> str:
        return self.sp.url

    @property
    def pid(self) -> int:
        return self.owned.pid

    def stop(self) -> None:
        self.owned.stop()


def start_server(config_path: str, log_path: str, extra_args: list[str]) -> Hotserve:
    """`python -m hotserve serve --model_config_file ...` on 127.0.0.1 through
    hotserve.launcher.ServerProcess; ready once small is AVAILABLE (the server's /readyz stays
    503 while big has no version, so it is not waited for)."""
    from hotserve.launcher import ServerProcess

    sp = ServerProcess(["--model_config_file", config_path, *extra_args], log_path)
    try:
        sp.start(timeout=60)
    except BaseException:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait(5)
        raise
    owned = procs.Owned(sp.proc, "hotserve", own_group=False, stop_fn=sp.stop)
    srv = Hotserve(sp, owned, log_path)
    try:
        deadline = time.monotonic() + 60
        while _state(_get_json(f"{sp.url}/v1/models/small")[1]) != "AVAILABLE":
            if sp.proc.poll() is not None:
                raise RuntimeError(f"hotserve exited with {sp.proc.returncode}; log {log_path}:\n{sp.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"small not AVAILABLE within 60 s; log {log_path}:\n{sp.log()[-3000:]}")
            time.sleep(0.1)
    except BaseException:
        owned.stop()
        raise
    return srv


def big_memory_metric(url: str) -> dict:
    """hotserve_version_memory_bytes{model="big",version="1",kind=...} from /metrics."""
    out = {}
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("hotserve_version_memory_bytes{") and 'model="big"' in line:
            m = re.search(r'kind="(\w+)"\}\s+([0-9.eE+]+)', line)
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


_AVAILABLE_LINE = re.compile(r"model big version 1: available after ([\d.]+)s \(memory \+([\d.]+) MiB, files ([\d.]+) MiB\)")


def big_log_line(log_path: str) -> dict:
    try:
        with open(log_path, errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    m = _AVAILABLE_LINE.search(text)
    if not m:
        return {}
    return {"line": m.group(0), "load_s": float(m.group(1)), "memory_mib": float(m.group(2)), "files_mib": float(m.group(3))}


# -- samplers and events ----------------------------------------------------------------------

class SeriesSampler(procs.Sampler):
    """procs.Sampler that also keeps the series of (time, RSS bytes, CPU seconds) of the
    server's process tree, so windows chosen after the run can be read from it."""

    def __init__(self, root: int, interval: float, cpus: set[int]) -> None:
        super().__init__(root, interval=interval, cpus=cpus)
        self.series: list[tuple[float, int, float]] = []

    def run(self) -> None:
        _pin_self(self.cpus)
        while not self._halt.is_set():
            pids = procs.tree_pids(self.root)
            rss, cpu = procs.rss_bytes(pids), procs.cpu_seconds(pids)
            self.series.append((time.monotonic(), rss, cpu))
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def cpu_at(self, t: float) -> float:
        s = self.series
        if not s:
            return float("nan")
        if t <= s[0][0]:
            return s[0][2]
        for (ta, _, ca), (tb, _, cb) in zip(s, s[1:]):
            if ta <= t <= tb:
                return ca + (cb - ca) * (t - ta) / (tb - ta) if tb > ta else ca
        return s[-1][2]

    def window(self, a: float, b: float) -> dict:
        rss = [r for t, r, _ in self.series if a <= t <= b]
        before = [r for t, r, _ in self.series if t <= a]
        after = [r for t, r, _ in self.series if t >= b]
        cpu = self.cpu_at(b) - self.cpu_at(a)
        return {
            "rss_before_mib": before[-1] / 2**20 if before else float("nan"),
            "rss_after_mib": after[0] / 2**20 if after else float("nan"),
            "rss_peak_mib": max(rss + before[-1:] + after[:1]) / 2**20 if (rss or before or after) else float("nan"),
            "server_cpu_pct": 100.0 * cpu / (b - a) if b > a else float("nan"),
        }


class Poller(threading.Thread):
    """GET /v1/models/big every `interval` seconds (in every phase, so each carries the same
    side traffic); remembers when version 1 was first seen AVAILABLE."""

    def __init__(self, url: str, interval: float, cpus: set[int], pid: int) -> None:
        super().__init__(daemon=True)
        self.url, self.interval, self.cpus, self.pid = url, interval, cpus, pid
        self.first_available: float | None = None
        self.threads_at_available: dict[int, float] = {}
        self.last_state = "-"
        self.polls = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        _pin_self(self.cpus)
        while not self.stop_event.is_set():
            _, doc = _get_json(f"{self.url}/v1/models/big", timeout=max(1.0, 10 * self.interval))
            self.polls += 1
            self.last_state = _state(doc)
            if self.last_state == "AVAILABLE" and self.first_available is None:
                self.first_available = time.monotonic()
                self.threads_at_available = procs.thread_cpu(self.pid)
            self.stop_event.wait(self.interval)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)


class Event(threading.Thread):
    """Runs fn() at time `at`, pinned to the client cores (the bench's own work stays off the
    server's core). fn's exceptions are kept for the caller."""

    def __init__(self, at: float, fn, cpus: set[int]) -> None:
        super().__init__(daemon=True)
        self.at, self.fn, self.cpus = at, fn, cpus
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        _pin_self(self.cpus)
        try:
            time.sleep(max(0.0, self.at - time.monotonic()))
            self.result = self.fn()
        except BaseException as exc:  # reported by the caller
            self.error = exc


class WrkStopper(threading.Thread):
    """Ends the running wrk early (SIGINT: wrk stops, prints its report and runs done(), like
    at the end of -d) once should_stop() is true. Only the bench's own wrk child is signalled."""

    def __init__(self, should_stop, cpus: set[int]) -> None:
        super().__init__(daemon=True)
        self.should_stop, self.cpus = should_stop, cpus
        self.stopped_at: float | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        _pin_self(self.cpus)
        while not self.halt.wait(0.05):
            if not self.should_stop():
                continue
            for pid in procs.tree_pids(os.getpid())[1:]:
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        if f.read().strip() == "wrk":
                            os.kill(pid, signal.SIGINT)
                            self.stopped_at = time.monotonic()
                except OSError:
                    pass
            if self.stopped_at is not None:
                return


_SPY_THREAD = re.compile(r'^Thread \S+ \(([^)]*)\): "([^"]*)"')
_SPY_FRAME = re.compile(r"^\s+(\S+) \(([^)]*)\)")


class SpyDumper(threading.Thread):
    """`py-spy dump --nonblocking` of the server every `interval` s, from `start_at` until
    done() is true: which thread holds the GIL and where the load thread is, while it loads.
    Dumps are kept in a file; summary() counts the load thread's top frames."""

    def __init__(self, exe: str, pid: int, start_at: float, done, out_path: str, cpus: set[int], interval: float) -> None:
        super().__init__(daemon=True)
        self.exe, self.pid, self.start_at, self.done, self.out_path, self.cpus = exe, pid, start_at, done, out_path, cpus
        self.interval = interval
        self.dumps: list[dict] = []
        self.halt = threading.Event()

    def run(self) -> None:
        _pin_self(self.cpus)
        if self.halt.wait(max(0.0, self.start_at - time.monotonic())):
            return
        with open(self.out_path, "w") as out:
            while not self.halt.is_set() and not self.done():
                t = time.monotonic()
                try:
                    r = subprocess.run([self.exe, "dump", "--pid", str(self.pid), "--nonblocking"],
                                       capture_output=True, text=True, timeout=10)
                except subprocess.TimeoutExpired:
                    continue
                out.write(f"=== t={t:.3f}\n{r.stdout}{r.stderr}\n")
                self.dumps.append(self._parse(t, r.stdout))
                self.halt.wait(max(0.0, t + self.interval - time.monotonic()))

    @staticmethod
    def _parse(t: float, text: str) -> dict:
        threads, cur = [], None
        for line in text.splitlines():
            m = _SPY_THREAD.match(line)
            if m:
                cur = {"status": m.group(1), "name": m.group(2), "frames": []}
                threads.append(cur)
                continue
            m = _SPY_FRAME.match(line)
            if m and cur is not None:
                cur["frames"].append(f"{m.group(1)} ({m.group(2)})")
        gil = [th["name"] for th in threads if "gil" in th["status"]]
        load = next((th for th in threads if th["name"].startswith("load")), None)
        return {"t": t, "gil_holder": gil[0] if gil else None,
                "load_status": load["status"] if load else None,
                "load_frames": load["frames"][:4] if load else []}

    def summary(self, t_from: float, t_to: float) -> dict:
        sel = [d for d in self.dumps if t_from <= d["t"] <= t_to and d["load_frames"]]
        by_frame: dict[str, dict] = {}
        for d in sel:
            # The innermost frame that is not a generic helper says what the load is doing.
            key = d["load_frames"][0]
            e = by_frame.setdefault(key, {"frame": key, "dumps": 0, "load_holds_gil": 0,
                                          "first_s": d["t"] - t_from, "caller": " <- ".join(d["load_frames"][1:3])})
            e["dumps"] += 1
            e["load_holds_gil"] += int(d["gil_holder"] is not None and d["gil_holder"].startswith("load"))
        return {"dumps": len(sel), "by_frame": sorted(by_frame.values(), key=lambda e: e["first_s"]),
                "gil_holders": {h: sum(1 for d in sel if d["gil_holder"] == h) for h in {d["gil_holder"] for d in sel}}}


def publish_big(staging: str, base: str, sampler: SeriesSampler) -> dict:
    """hotserve.repository.publish.commit(): the staged version (copied, hashed and fsynced
    before the load by publish.stage()) is renamed into the served base path."""
    from hotserve.repository.publish import commit

    pids = procs.tree_pids(sampler.root)
    rss = procs.rss_bytes(pids)
    threads = procs.thread_cpu(sampler.root)
    t = time.monotonic()
    commit(staging, base, 1)
    return {"t_publish": t, "t_published": time.monotonic(), "rss_at_publish_mib": rss / 2**20, "threads": threads}


def run_hogs(seconds: float, n: int) -> dict:
    """n CPU-hog processes for `seconds`; the window is from the first loop start to the last
    loop end they report."""
    hogs = []
    try:
        for i in range(n):
            proc = subprocess.Popen([sys.executable, "-c", HOG_CODE, f"{seconds:.3f}"], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            hogs.append(procs.Owned(proc, f"cpu-hog-{i}", own_group=False))
        outs = []
        for h in hogs:
            out, _ = h.proc.communicate(timeout=seconds + 30)
            parts = out.split()
            if h.proc.returncode != 0 or len(parts) != 3:
                raise RuntimeError(f"CPU hog exited with {h.proc.returncode}: {out[-500:]}")
            outs.append(tuple(float(x) for x in parts))
    finally:
        for h in hogs:
            h.stop(timeout=2)
    return {"t_start": min(o[0] for o in outs), "t_end": max(o[1] for o in outs), "hog_cpu_s": sum(o[2] for o in outs)}


# -- analysis ---------------------------------------------------------------------------------

def window_stats(rows: list[tuple], a: float, b: float) -> dict:
    """Requests ending in [a, b): count, latency percentiles, the longest stretch of time with
    no response at all (a stall shows here), non-200 answers."""
    sel = [r for r in rows if a <= r[1] < b]
    lat = sorted((r[1] - r[0]) * 1e3 for r in sel if r[2] == 200)
    ends = [a] + [r[1] for r in sel] + [b]
    gap = max((y - x for x, y in zip(ends, ends[1:])), default=float("nan"))
    return {
        "window_s": b - a,
        "requests": len(sel),
        "rps": len(lat) / (b - a) if b > a else float("nan"),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else float("nan"),
        "longest_gap_ms": gap * 1e3,
        "non200_in_window": sum(1 for r in sel if r[2] != 200),
    }


def read_rows(prefix: str) -> list[tuple]:
    from benchlib.swaps import _read_rows

    rows, _ = _read_rows(prefix)
    return rows


# -- one server configuration -------------------------------------------------------------------

class Run:
    """One server configuration: its own directories, server and phases."""

    def __init__(self, opts, workdir: str, key: str, label: str, extra_args: list[str], small_model: str,
                 big_published: str, log) -> None:
        self.opts, self.key, self.label, self.extra_args, self.log = opts, key, label, extra_args, log
        self.dir = os.path.join(workdir, f"run-{key}")
        self.small_base = os.path.join(self.dir, "small")
        self.big_base = os.path.join(self.dir, "big")
        from hotserve.repository.publish import publish, stage

        publish(small_model, self.small_base)
        # big v1 staged now (copy, sha256, fsync); only its commit (the rename) happens during the load.
        _, self.big_staging = stage(big_published, self.big_base, 1)
        self.config_path = os.path.join(self.dir, "models.yaml")
        with open(self.config_path, "w") as f:
            f.write("model_config_list:\n"
                    f"  - name: small\n    base_path: {json.dumps(self.small_base)}\n    model_platform: onnx\n"
                    f"  - name: big\n    base_path: {json.dumps(self.big_base)}\n    model_platform: onnx\n")
        self.server: Hotserve | None = None

    def measure(self, payload, phase_s: float, name: str, event_fn=None, stop_when=None, spy=False) -> dict:
        """One phase: wrk on small for phase_s seconds (or until stop_when(poller, t0) says so),
        event_fn(sampler) run at t0 + lead, the server sampled and big polled throughout."""
        o = self.opts
        prefix = os.path.join(self.dir, f"req-{name}-")
        for old in glob.glob(prefix + "*.tsv"):
            os.unlink(old)
        sampler = SeriesSampler(self.server.pid, 0.1, o.client_cpu_set)
        poller = Poller(self.server.url, o.poll_interval, o.client_cpu_set, self.server.pid)
        sampler.start()
        poller.start()
        event = stopper = dumper = None
        try:
            t0 = time.monotonic()
            if spy:
                dumper = SpyDumper(self.opts.py_spy, self.server.pid, t0 + o.lead_seconds,
                                   lambda: poller.first_available is not None, os.path.join(self.dir, f"py-spy-{name}.txt"),
                                   o.client_cpu_set, o.py_spy_interval)
                dumper.start()
            if event_fn is not None:
                event = Event(t0 + o.lead_seconds, lambda: event_fn(sampler), o.client_cpu_set)
                event.start()
            if stop_when is not None:
                stopper = WrkStopper(lambda: stop_when(poller, t0), o.client_cpu_set)
                stopper.start()
            summary = loadgen.run_wrk(self.server.url, payload, o.concurrency, phase_s, threads=o.concurrency,
                                      client_cpus=o.client_cpus, workdir=self.dir, script="swap.lua",
                                      extra_env={"BENCH_LOG_PREFIX": prefix})
            t_wrk_end = time.monotonic()
            if event is not None:
                event.join(o.load_timeout + phase_s + 60)
        finally:
            for th in (stopper, dumper):
                if th is not None:
                    th.halt.set()
                    th.join(15)
            poller.finish()
            sampler.finish()
        if event is not None and event.error is not None:
            raise RuntimeError(f"{name}: {event.error!r}") from event.error
        rows = read_rows(prefix)
        if not rows:
            raise RuntimeError(f"{name}: wrk recorded no requests")
        d = summary["errors_detail"]
        return {
            "t0": t0, "t_wrk_end": t_wrk_end, "rows": rows, "sampler": sampler, "poller": poller,
            "event": event.result if event is not None else None, "dumper": dumper,
            "failed": sum(1 for r in rows if r[2] != 200) + d["connect"] + d["read"] + d["write"] + d["timeout"],
            "failed_detail": {"non200": sum(1 for r in rows if r[2] != 200), **{k: v for k, v in d.items() if k != "non2xx"}},
            "wrk_requests": summary["requests"], "client_cpu_pct": summary["client_cpu_pct"],
            "whole": window_stats(rows, rows[0][0], rows[-1][1]),
        }

    def execute(self, payload, reference) -> dict:
        from benchlib.payloads import check

        o = self.opts
        log = self.log
        t_start = time.monotonic()
        self.server = start_server(self.config_path, os.path.join(self.dir, "hotserve.log"), self.extra_args)
        log(f"[{self.label}] server {self.server.url} (pid {self.server.pid}) up in {time.monotonic() - t_start:.1f}s, "
            f"small AVAILABLE, big has no version yet")
        try:
            check(payload, self.server.url, "", reference)
            if o.warmup > 0:
                loadgen.run_wrk(self.server.url, payload, o.concurrency, o.warmup, threads=1, client_cpus=o.client_cpus,
                                workdir=self.dir)
            phases = {}
            log(f"[{self.label}] phase baseline: {o.phase_seconds:g}s")
            phases["baseline"] = self.measure(payload, o.phase_seconds, "baseline")
            self._log_whole("baseline", phases["baseline"])

            log(f"[{self.label}] phase big load: big v1 published at +{o.lead_seconds:g}s; wrk runs {o.phase_seconds:g}s, "
                f"or until {TAIL_S:g}s after big is AVAILABLE if that is later (at most {o.load_timeout:g}s)")
            proc = self.server.owned.proc

            def load_over(poller: Poller, t0: float) -> bool:
                if poller.last_state == "END" or proc.poll() is not None:
                    return True  # failed: stop now, reported below
                t = poller.first_available
                return t is not None and time.monotonic() >= max(t0 + o.phase_seconds, t + TAIL_S)

            phases["big load"] = self.measure(
                payload, o.phase_seconds + o.lead_seconds + o.load_timeout, "bigload",
                event_fn=lambda s: publish_big(self.big_staging, self.big_base, s),
                stop_when=load_over, spy=bool(o.py_spy))
            b = phases["big load"]
            pub = b["event"]
            if b["poller"].first_available is None:
                raise RuntimeError(f"big v1 did not become AVAILABLE (last state {b['poller'].last_state}, "
                                   f"--load-timeout {o.load_timeout:g}s); log {self.server.log_path}:\n"
                                   f"{self.server.sp.log()[-3000:]}")
            t_avail = b["poller"].first_available
            load_s = t_avail - pub["t_publish"]
            # RSS right after the load, read now that it is done.
            rss_after = procs.rss_bytes(procs.tree_pids(self.server.pid)) / 2**20
            memline = big_log_line(self.server.log_path)
            metric = big_memory_metric(self.server.url)
            log(f"[{self.label}] big AVAILABLE {load_s:.2f}s after publish; server log: {memline.get('line', '?')}")
            # The baseline ran before the load's length was known: its window is cut if the load
            # outlasted it. The later phases are made long enough.
            fits = o.lead_seconds + load_s <= o.phase_seconds - 0.5
            L_base = load_s if fits else max(0.5, o.phase_seconds - 0.5 - o.lead_seconds)
            if not fits:
                log(f"[{self.label}] WARNING: the load took {load_s:.1f}s, longer than the baseline phase allows "
                    f"({o.phase_seconds:g}s - {o.lead_seconds:g}s lead); baseline window cut to {L_base:.1f}s. "
                    f"Rerun with --phase-seconds {int(o.lead_seconds + load_s + 3)}")
            self._log_whole("big load", b)
            later_s = max(o.phase_seconds, math.ceil(o.lead_seconds + load_s + TAIL_S))

            log(f"[{self.label}] phase CPU hog: {later_s:g}s, {o.hog_procs} process(es) spinning for {load_s:.2f}s at +{o.lead_seconds:g}s")

            def hog(sampler: SeriesSampler) -> dict:
                before = procs.thread_cpu(sampler.root)
                out = run_hogs(load_s, o.hog_procs)
                out["server_threads"] = busiest_threads(before, procs.thread_cpu(sampler.root), out["t_end"] - out["t_start"])
                return out

            phases["CPU hog"] = self.measure(payload, later_s, "hog", event_fn=hog)
            self._log_whole("CPU hog", phases["CPU hog"])

            log(f"[{self.label}] phase baseline, big loaded: {later_s:g}s")
            phases["baseline, big loaded"] = self.measure(payload, later_s, "after")
            self._log_whole("baseline, big loaded", phases["baseline, big loaded"])
        finally:
            self.server.stop()

        # Windows.
        rows_out = []
        for name, ph in phases.items():
            cut = False
            if name == "big load":
                a, b_cut = pub["t_publish"], t_avail
            elif name == "CPU hog":
                a, b_cut = ph["event"]["t_start"], ph["event"]["t_end"]
            else:
                a = ph["t0"] + o.lead_seconds
                L = L_base if name == "baseline" else load_s
                cut = L < load_s
                b_cut = a + L
            st = window_stats(ph["rows"], a, b_cut)
            st.update(ph["sampler"].window(a, b_cut))
            row = {"run": self.key, "run_label": self.label, "phase": name, **st,
                   "failed": ph["failed"], "failed_detail": ph["failed_detail"], "wrk_requests": ph["wrk_requests"],
                   "client_cpu_pct": ph["client_cpu_pct"], "whole_phase": ph["whole"], "phase_p99_ms": ph["whole"]["p99_ms"],
                   "phase_s": ph["whole"]["window_s"], "window_cut": cut,
                   "versions_seen": sorted({r[3] for r in ph["rows"] if r[3] is not None})}
            if name == "CPU hog":
                row["hog_cpu_pct"] = 100.0 * ph["event"]["hog_cpu_s"] / (b_cut - a) if b_cut > a else float("nan")
                row["server_threads"] = ph["event"]["server_threads"]
            if name == "big load":
                row["server_threads"] = busiest_threads(pub["threads"], b["poller"].threads_at_available, t_avail - pub["t_publish"])
            rows_out.append(row)
        base_p99 = rows_out[0]["p99_ms"]
        for r in rows_out:
            r["p99_ratio"] = r["p99_ms"] / base_p99 if base_p99 and base_p99 > 0 else float("nan")
        big = {
            "load_s": load_s,
            "publish_rename_ms": (pub["t_published"] - pub["t_publish"]) * 1e3,
            "server_log": memline,
            "metric_memory_bytes": metric,
            "rss_at_publish_mib": pub["rss_at_publish_mib"],
            "rss_after_load_mib": rss_after,
            "rss_peak_during_load_mib": next(r["rss_peak_mib"] for r in rows_out if r["phase"] == "big load"),
            "poll_interval_s": o.poll_interval,
        }
        if b["dumper"] is not None:
            big["py_spy"] = b["dumper"].summary(pub["t_publish"], t_avail)
        return {"key": self.key, "label": self.label, "server_args": self.extra_args, "rows": rows_out, "big": big}

    def _log_whole(self, name: str, ph: dict) -> None:
        w = ph["whole"]
        self.log(f"[{self.label}]   {name}: {w['requests']:,} requests, whole-phase p50 {w['p50_ms']:.2f} ms p99 {w['p99_ms']:.2f} ms, "
                 f"failed {ph['failed']}")


# -- report ----------------------------------------------------------------------------------

COLUMNS = [
    # header, key, format, align
    ("server", "run_label", None, "<"),
    ("phase", "phase", None, "<"),
    ("window s", "window_s", "{:.2f}", ">"),
    ("requests", "requests", "{:,d}", ">"),
    ("req/s", "rps", "{:,.0f}", ">"),
    ("p50 ms", "p50_ms", "{:.2f}", ">"),
    ("p99 ms", "p99_ms", "{:.2f}", ">"),
    ("max ms", "max_ms", "{:.1f}", ">"),
    ("longest gap ms", "longest_gap_ms", "{:.1f}", ">"),
    ("phase p99 ms", "phase_p99_ms", "{:.2f}", ">"),
    ("p99 / baseline", "p99_ratio", "{:.2f}x", ">"),
    ("failed", "failed", "{:d}", ">"),
    ("srv CPU%", "server_cpu_pct", "{:.0f}", ">"),
    ("RSS MiB", "rss_peak_mib", "{:.0f}", ">"),
]

NOTES = [
    "window: baseline rows = [phase start + lead, + the load's duration]; big load = publish (rename into big's base path) "
    "-> big v1 first seen AVAILABLE; CPU hog = the hog's own loop (as long as the load). Latencies are small's requests ending in the window.",
    "p50/p99/max: small's REST TFS JSON batch-1 latency from wrk's per-request log (bench/wrk/swap.lua); "
    "longest gap: longest stretch of the window with no response completing (a stall shows here).",
    "p99 / baseline: the row's p99 over the same server's baseline p99. Compare big load's ratio with CPU hog's: "
    "about equal = the load costs what sharing the two cores with one busy thread costs; clearly above = something else stalls requests.",
    "phase p99: small's p99 over the whole phase (every request wrk made), for how representative the window is. "
    "failed: non-200 answers + socket errors over the whole phase (must be 0). "
    "srv CPU%: server CPU time in the window / window length (200% = both cores). RSS MiB: server RSS peak in the window.",
]


def render(results: dict) -> tuple[str, str]:
    meta = results["meta"]
    f = report._fmt
    title = f"hotserve load isolation — {meta['started']}" + (" (NOISY quick run)" if meta["phase_seconds"] < 10 else "")
    metaline = (f"{meta['cpus']} cores; load avg at start {meta['loadavg_start']}, at end {meta.get('loadavg_end', '?')}; "
                f"wrk -c{meta['concurrency']} on CPU {meta['client_cpus']}, server not pinned; "
                f"{meta['phase_seconds']:g} s phases, load at +{meta['lead_seconds']:g} s; hotserve {meta['hotserve_commit']}")
    text = [title, "=" * len(title), metaline, ""]
    md = [f"# {title}", "", metaline, ""]
    if meta.get("incomplete"):
        text += [f"INCOMPLETE: {meta['incomplete']}", ""]
        md += [f"**INCOMPLETE:** {meta['incomplete']}", ""]
    bm = results.get("big_model")
    if bm:
        line = (f"big model: MLP {'-'.join(map(str, bm['sizes']))}, {bm['file_bytes'] / 2**20:.0f} MiB file "
                f"({bm['file_bytes'] / 1e6:.0f} MB; {bm['weights_bytes'] / 2**20:.0f} MiB of float32 weights), generated in {bm['generate_s']:.1f}s; "
                f"small: MLP {'-'.join(map(str, SMALL_SIZES))}")
        text += [line, ""]
        md += [line, ""]
    rows_all = [r for run in results.get("runs", []) for r in run["rows"]]
    if rows_all:
        headers = [c[0] for c in COLUMNS]
        aligns = [c[3] for c in COLUMNS]
        rows = [[f(r.get(k), fmt) for _h, k, fmt, _a in COLUMNS] for r in rows_all]
        text += [report.text_table(headers, rows, aligns), ""]
        md += [report.md_table(headers, rows, aligns), ""]
    kv = []
    for run in results.get("runs", []):
        big, rows = run["big"], {r["phase"]: r for r in run["rows"]}
        mem = big["server_log"]
        met = big["metric_memory_bytes"]
        kv.append([f"{run['label']}: big load", f"publish -> AVAILABLE {big['load_s']:.2f} s (poll every {big['poll_interval_s']:g} s); "
                   f"server log: available after {f(mem.get('load_s'), '{:.2f}')} s (memory +{f(mem.get('memory_mib'), '{:.0f}')} MiB, "
                   f"files {f(mem.get('files_mib'), '{:.0f}')} MiB)"])
        kv.append([f"{run['label']}: big memory", f"hotserve_version_memory_bytes measured {f(met.get('measured', float('nan')) / 2**20, '{:.0f}')} MiB, "
                   f"estimate {f(met.get('estimate', float('nan')) / 2**20, '{:.0f}')} MiB; server RSS {big['rss_at_publish_mib']:.0f} MiB at publish -> "
                   f"{big['rss_after_load_mib']:.0f} MiB after (peak {big['rss_peak_during_load_mib']:.0f} MiB during the load)"])
        bl, hog = rows.get("big load"), rows.get("CPU hog")
        if bl and hog:
            excess = bl["p99_ratio"] / hog["p99_ratio"] if hog["p99_ratio"] and hog["p99_ratio"] > 0 else float("nan")
            th = bl.get("server_threads") or {}
            kv.append([f"{run['label']}: reading", f"big-load p99 ratio {f(bl['p99_ratio'], '{:.2f}')}x vs CPU-hog p99 ratio "
                       f"{f(hog['p99_ratio'], '{:.2f}')}x -> big load / CPU hog = {f(excess, '{:.2f}')}x; "
                       f"longest gap {f(bl['longest_gap_ms'], '{:.0f}')} ms vs {f(hog['longest_gap_ms'], '{:.0f}')} ms"])
            kv.append([f"{run['label']}: CPU", f"the load thread (busiest server thread in the load window) used "
                       f"{f(th.get('busiest_thread_cpu_pct'), '{:.0f}')}% of a core, the hog {f(hog.get('hog_cpu_pct'), '{:.0f}')}%; "
                       f"server CPU {f(bl['server_cpu_pct'], '{:.0f}')}% in the load window, {f(hog['server_cpu_pct'], '{:.0f}')}% in the hog's, "
                       f"{f(rows['baseline']['server_cpu_pct'], '{:.0f}')}% in the baseline's; "
                       f"{th.get('threads_started', '-')} server thread(s) started during the load (onnxruntime's pool for big)"])
        spy = big.get("py_spy")
        if spy:
            frames = "; ".join(f"+{e['first_s']:.2f}s {e['frame']} x{e['dumps']} (GIL held by load thread in {e['load_holds_gil']})"
                               for e in spy["by_frame"])
            kv.append([f"{run['label']}: py-spy", f"{spy['dumps']} dumps during the load; load thread's innermost Python frame: {frames}; "
                       f"GIL holder per dump: {spy['gil_holders']}"])
        if any(r["window_cut"] for r in run["rows"]):
            kv.append([f"{run['label']}: WARNING", "the load outlasted the baseline phase: its window was cut; rerun with a larger --phase-seconds"])
    if kv:
        text += [report.text_table(None, kv, ["<", "<"]), ""]
        md += [report.md_table(["measure", "value"], kv, ["<", "<"]), ""]
    text += ["  " + n for n in NOTES]
    md += ["- " + n for n in NOTES]
    return "\n".join(text).rstrip() + "\n", "\n".join(md).rstrip() + "\n"


def write(results: dict, results_dir: str) -> tuple[str, str, str]:
    text, md = render(results)
    os.makedirs(results_dir, exist_ok=True)
    jpath, mpath = os.path.join(results_dir, "load_isolation.json"), os.path.join(results_dir, "load_isolation.md")
    with open(jpath, "w") as fh:
        json.dump(report._jsonable(results), fh, indent=1)
        fh.write("\n")
    with open(mpath, "w") as fh:
        fh.write(md)
    return text, jpath, mpath


# -- main ------------------------------------------------------------------------------------

def build_models(opts, workdir: str, log) -> tuple[str, str, dict]:
    """small and big ONNX files, and big v1 published into <workdir>/big_src (not served)."""
    from hotserve.examples import make_mlp
    from hotserve.repository.publish import publish

    small = make_mlp(os.path.join(workdir, "build", "small", "model.onnx"), sizes=SMALL_SIZES, seed=1)
    weights = sum(a * b + b for a, b in zip(opts.big_sizes[:-1], opts.big_sizes[1:])) * 4
    log(f"generating big: MLP {'-'.join(map(str, opts.big_sizes))} ({weights / 2**20:.0f} MiB of weights)")
    t0 = time.monotonic()
    big = make_mlp(os.path.join(workdir, "build", "big", "model.onnx"), sizes=opts.big_sizes, seed=2)
    gen_s = time.monotonic() - t0
    size = os.path.getsize(big)
    log(f"big model file: {size:,} bytes = {size / 2**20:.0f} MiB ({size / 1e6:.0f} MB), generated in {gen_s:.1f}s")
    if size >= ONNX_PROTOBUF_LIMIT:
        raise RuntimeError(f"big model is {size} bytes, over ONNX's 2 GB protobuf limit")
    if size < MIN_BIG_BYTES:
        log(f"WARNING: big model is under {MIN_BIG_BYTES / 1e6:.0f} MB; the requirement asks for >= 500 MB")
    t0 = time.monotonic()
    _, big_v1 = publish(big, os.path.join(workdir, "big_src"))
    log(f"big v1 published into staging {big_v1} in {time.monotonic() - t0:.1f}s (copy, sha256 manifest, fsync; not served)")
    os.unlink(big)  # the published copy is the one used from here on
    return small, big_v1, {"sizes": list(opts.big_sizes), "file_bytes": size, "weights_bytes": weights, "generate_s": gen_s}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    log = session.begin()
    import onnxruntime  # a hotserve dependency: importable once hotserve is
    try:
        tools.ensure_binary("taskset", "util-linux", not opts.no_install)
        tools.ensure_binary("wrk", "wrk", not opts.no_install)
    except tools.ToolError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    workdir = tempfile.mkdtemp(prefix="hotserve-loadiso-")
    results: dict = {"meta": {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "loadavg_start": session.loadavg(), "client_cpus": opts.client_cpus,
        "phase_seconds": opts.phase_seconds, "lead_seconds": opts.lead_seconds, "warmup_s": opts.warmup,
        "concurrency": opts.concurrency, "hog_procs": opts.hog_procs, "variants": opts.variants,
        "poll_interval_s": opts.poll_interval, "hotserve_commit": session.git_commit(),
        "versions": {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                     "wrk": tools.tool_version(["wrk", "-v"])},
        "workdir": workdir,
    }, "runs": []}
    with session.guarded(results, log) as guard:
        from benchlib.payloads import make_payload, reference_output

        small, big_v1, results["big_model"] = build_models(opts, workdir, log)
        base_payload = make_payload("tfs-json", 1)
        payload = dataclasses.replace(base_payload, api=dataclasses.replace(base_payload.api, path="/v1/models/small:predict"))
        reference = reference_output(small, payload.x)
        configs = [("default", "default", [])] + [(k, VARIANTS[k][0], VARIANTS[k][1]) for k in opts.variants]
        for key, label, extra in configs:
            run = Run(opts, workdir, key, label, extra, small, big_v1, log)
            results["runs"].append(run.execute(payload, reference))
    failed = guard.failed
    failed = failed or any(r["failed"] for run in results["runs"] for r in run["rows"])
    if results["runs"] or results.get("big_model"):
        text, jpath, mpath = write(results, opts.results_dir)
        print()
        print(text)
        print(f"written: {os.path.relpath(jpath)}, {os.path.relpath(mpath)} (total {results['meta']['elapsed_s']:.0f} s)")
    if opts.keep_workdir:
        print(f"work directory kept: {workdir}")
    elif failed:
        # Keep the logs for a post-mortem, drop the big model files.
        for d in [os.path.join(workdir, "big_src"), os.path.join(workdir, "build")] + \
                glob.glob(os.path.join(workdir, "run-*", "big")):
            shutil.rmtree(d, ignore_errors=True)
        print(f"work directory kept (server logs, per-request logs; big model files removed): {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
