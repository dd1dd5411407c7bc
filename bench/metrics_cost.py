"""Request-path cost of metrics: what recording one request costs, hotserve's registry against
prometheus_client (in-process and multiprocess mode), measured in the same run.

    python bench/metrics_cost.py            # about 20 s
    python bench/metrics_cost.py --quick    # about 5 s

Rows (ns per request, best of --repeats runs of --n calls each, one thread):
- hotserve record_request: what the request frame calls once per request (count + latency
  histogram per model and version with TF Serving's 33 buckets, plus the dashboard's
  per-second window).
- ... as before (dddc537): count + the old 13-bucket histogram, no window: the same-run baseline.
- hotserve frame: RequestFrame.run_sync around a no-op model (bind, execute, release, record),
  i.e. the whole per-request overhead of the frame with metrics (and tracing off).
- prometheus_client: the same two samples (Counter.labels().inc(), Histogram.labels().observe())
  with the same labels and buckets, in-process registry.
- prometheus_client multiprocess: the same with PROMETHEUS_MULTIPROC_DIR set (mmap'd files, the
  library's answer to several worker processes), run in a child process because the mode is
  chosen at import.
Scrape rows: rendering the exposition with 2 workers' series (hotserve: own registry + one
sibling's over its unix socket; prometheus_client multiprocess: MultiProcessCollector reading
both processes' files).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LABELS = ("mlp", "3", "predict", "REST", "OK")
# TF Serving's request_latency buckets: 10 us x 1.8^i, 33 of them.
BUCKETS = tuple(10 * 1.8 ** i for i in range(33))


def _timeit(fn, n: int, repeats: int, between=None) -> float:
    """Best ns per call of fn() over repeats runs of n calls (the minimum: on a shared machine
    the other runs measure the neighbours). `between` runs untimed before each run."""
    runs = []
    for _ in range(repeats):
        if between is not None:
            between()
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter_ns() - t0) / n)
    return min(runs)


def bench_hotserve(n: int, repeats: int) -> dict:
    from hotserve.observability import metrics

    def one():
        metrics.record_request("mlp", "3", "predict", "REST", "OK", 0.000731)

    # What record_request did before the dashboard's window and TF Serving's buckets (commit
    # dddc537): the same two samples with the old 13 latency buckets, for a same-run comparison.
    count = metrics.Counter("before_count", "", ("model_name", "model_version", "API", "entrypoint", "status"))
    latency = metrics.Histogram("before_latency", "", ("model_name", "model_version", "API", "entrypoint"),
                                (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
                                 1_000_000, 5_000_000))

    def before():
        count.inc(LABELS)
        latency.observe(LABELS[:4], 731.0)

    from hotserve.observability import live

    # The live ticker takes the second's samples once a second; a run of n calls stands for one
    # (busy) second, so the window is taken between runs as the ticker would.
    return {"hotserve record_request": _timeit(one, n, repeats, between=live._take),
            "hotserve record_request as before (dddc537)": _timeit(before, n, repeats), **bench_frame(n, repeats)}


def bench_frame(n: int, repeats: int) -> dict:
    """RequestFrame.run_sync around a no-op model: the frame's whole per-request overhead."""
    from hotserve.core.loaded import LoadedVersion
    from hotserve.server.frame import Call, RequestFrame

    lv = LoadedVersion("mlp", 3, servable=None)  # type: ignore[arg-type]

    class _Manager:
        models: dict = {}

        def acquire(self, model, version, label, key):
            return lv.try_acquire()  # a Bound (version + revision), released by the frame

    frame = RequestFrame(_Manager(), executor=None)  # type: ignore[arg-type]
    call = Call("mlp")

    def one():
        frame.run_sync(call, lambda: None, lambda lv, p: None)

    from hotserve.observability import live

    return {"hotserve frame (no-op model)": _timeit(one, n, repeats, between=getattr(live, "_take", None))}


def bench_prometheus_client(n: int, repeats: int) -> dict:
    import prometheus_client as pc

    reg = pc.CollectorRegistry()
    count = pc.Counter("request_count", "r", ("model_name", "model_version", "API", "entrypoint", "status"), registry=reg)
    latency = pc.Histogram("request_latency", "l", ("model_name", "model_version", "API", "entrypoint"),
                           buckets=BUCKETS, registry=reg)

    def one():
        count.labels(*LABELS).inc()
        latency.labels(*LABELS[:4]).observe(731.0)

    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "in-process"
    out = {f"prometheus_client ({mode})": _timeit(one, n, repeats)}
    if mode == "multiprocess":
        from prometheus_client import multiprocess

        def scrape():
            r = pc.CollectorRegistry()
            multiprocess.MultiProcessCollector(r)
            pc.generate_latest(r)

        out["scrape: prometheus_client multiprocess, 2 processes"] = _timeit(scrape, 20, repeats)
    return out


def bench_hotserve_scrape(repeats: int) -> dict:
    """Render 2 workers' series: our own registry plus a sibling's over a real unix socket."""
    import asyncio

    from hotserve.observability import metrics
    from hotserve.server import peers

    metrics.record_request("mlp", "3", "predict", "REST", "OK", 0.000731)
    tmp = tempfile.mkdtemp(prefix="hotserve-bench-")

    async def main() -> float:
        me = peers.PeerServer(tmp, "1", state=lambda: {})
        await me.start()
        try:
            client = peers.Peers(tmp, "0")
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter_ns()
                for _ in range(20):
                    await client.render_metrics()
                runs.append((time.perf_counter_ns() - t0) / 20)
            return statistics.median(runs)
        finally:
            await me.stop()

    return {"scrape: hotserve, 2 workers (own + 1 sibling over unix socket)": asyncio.run(main())}


def child(args: argparse.Namespace) -> None:
    """In a child with PROMETHEUS_MULTIPROC_DIR set: a sibling process writes its samples too."""
    out = bench_prometheus_client(args.n, args.repeats)
    print(json.dumps(out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="n=50000, 5 repeats")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats = 50_000, 5
    if args.child:
        child(args)
        return 0
    rows = {}
    rows.update(bench_hotserve(args.n, args.repeats))
    rows.update(bench_prometheus_client(args.n, args.repeats))
    with tempfile.TemporaryDirectory(prefix="prom-mp-") as d:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": d}
        cmd = [sys.executable, __file__, "--child", "--n", str(args.n), "--repeats", str(args.repeats)]
        subprocess.run(cmd, env=env, check=True, capture_output=True)  # a sibling worker's files
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows.update(json.loads(out.strip().splitlines()[-1]))
    try:
        rows.update(bench_hotserve_scrape(args.repeats))
    except ImportError:
        pass  # before the peers module existed
    base = rows["hotserve record_request"]
    print(f"{'what':66} {'ns':>10} {'vs hotserve record_request':>28}")
    for name, ns in rows.items():
        unit = f"{ns / 1000:,.1f} us" if name.startswith("scrape") else f"{ns:,.0f}"
        ratio = "" if name.startswith("scrape") else f"{ns / base:.2f}x"
        print(f"{name:66} {unit:>10} {ratio:>28}")
    print(f"\n{args.n} calls x {args.repeats} repeats, best run; one thread; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
