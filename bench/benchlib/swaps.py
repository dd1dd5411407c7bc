"""Table 2: hotserve under a constant REST load while a new model version is published every
few seconds. Per-request start/end times, status and X-Model-Version come from wrk itself
(bench/wrk/swap.lua: response() hook, CLOCK_MONOTONIC through LuaJIT's FFI), so no second
client disturbs the measurement; publish times are taken with time.monotonic() around
hotserve.repository.publish.publish(), the same clock."""

from __future__ import annotations

import glob
import json
import os
import statistics
import threading
import time
import urllib.request

from benchlib import loadgen, procs, servers
from benchlib.loadgen import percentile
from benchlib.payloads import MODEL, check, make_payload, reference_output


def _build_models(build_dir: str, count: int) -> list[str]:
    from hotserve.examples import make_mlp

    return [make_mlp(os.path.join(build_dir, f"seed{seed}", "model.onnx"), seed=seed) for seed in range(1, count + 1)]


class _Publisher(threading.Thread):
    """Publishes models[1:] at t0 + k * interval (k = 1, 2, ...) while that is at least one
    interval before the end, so the last version is seen served. Runs pinned to the client
    cores: its file copies and fsyncs are the bench's cost, not the server's."""

    def __init__(self, models: list[str], base: str, t0: float, interval: float, duration: float, cpus: set[int]) -> None:
        super().__init__(daemon=True)
        self.models, self.base, self.t0 = models, base, t0
        self.interval, self.duration, self.cpus = interval, duration, cpus
        self.published: list[dict] = []
        self.error: BaseException | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        from hotserve.repository.publish import publish

        try:
            os.sched_setaffinity(0, self.cpus)
        except OSError:
            pass
        try:
            for k, src in enumerate(self.models[1:], 1):
                at = self.t0 + k * self.interval
                if at - self.t0 > self.duration - self.interval:
                    break
                if self.stop_event.wait(max(0.0, at - time.monotonic())):
                    break
                t_start = time.monotonic()
                version, _ = publish(src, self.base)
                t_end = time.monotonic()
                self.published.append({"version": version, "seed": k + 1, "t_start": t_start, "t_end": t_end})
        except BaseException as exc:  # reported by the caller
            self.error = exc


def _read_rows(prefix: str) -> tuple[list[tuple], int]:
    rows, backwards = [], 0
    for path in sorted(glob.glob(prefix + "*.tsv")):
        last = -1
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 4:
                    continue
                start, end, status = float(parts[0]), float(parts[1]), int(parts[2])
                version = int(parts[3]) if parts[3].isdigit() else None
                if status == 200 and version is not None:
                    if version < last:
                        backwards += 1
                    last = version
                rows.append((start, end, status, version))
    rows.sort(key=lambda r: r[1])
    return rows, backwards


def _windows_outside(spans: list[tuple[float, float]], t_from: float, t_to: float, size: float) -> list[tuple[float, float]]:
    """Pieces of [t_from, t_to) outside every span, cut to at most `size` long; pieces shorter
    than size / 2 are dropped."""
    spans = sorted(spans)
    gaps, cur = [], t_from
    for a, b in spans:
        if a > cur:
            gaps.append((cur, min(a, t_to)))
        cur = max(cur, b)
    if cur < t_to:
        gaps.append((cur, t_to))
    out = []
    for a, b in gaps:
        while b - a >= size / 2:
            out.append((a, min(b, a + size)))
            a += size
    return out


def analyse(rows: list[tuple], published: list[dict], window: float, wrk_summary: dict, backwards: int) -> dict:
    ok = [r for r in rows if r[2] == 200]
    t_first, t_last = rows[0][0], rows[-1][1]
    spans = [(p["t_start"], p["t_end"] + window) for p in published]

    def in_span(t: float) -> bool:
        return any(a <= t < b for a, b in spans)

    steady = sorted((r[1] - r[0]) * 1e3 for r in ok if not in_span(r[1]))
    swap_all = sorted((r[1] - r[0]) * 1e3 for r in ok if in_span(r[1]))
    per_publish = []
    for p, (a, b) in zip(published, spans):
        lat = sorted((r[1] - r[0]) * 1e3 for r in ok if a <= r[1] < b)
        first = next((r[1] for r in ok if r[3] == p["version"]), None)
        per_publish.append({
            "version": p["version"],
            "published_at_s": p["t_start"] - t_first,
            "publish_call_ms": (p["t_end"] - p["t_start"]) * 1e3,
            "publish_to_served_ms": (first - p["t_end"]) * 1e3 if first is not None else None,
            "window_requests": len(lat),
            "window_p50_ms": percentile(lat, 50),
            "window_p99_ms": percentile(lat, 99),
            "window_max_ms": lat[-1] if lat else float("nan"),
        })
    steady_windows = []
    for a, b in _windows_outside(spans, t_first, t_last, window):
        lat = sorted((r[1] - r[0]) * 1e3 for r in ok if a <= r[1] < b)
        if len(lat) >= 20:
            steady_windows.append(percentile(lat, 99))
    win_p99 = [x["window_p99_ms"] for x in per_publish if x["window_requests"]]
    served = [x["publish_to_served_ms"] for x in per_publish if x["publish_to_served_ms"] is not None]
    non200 = sum(1 for r in rows if r[2] != 200)
    socket_errors = wrk_summary["errors_detail"]["connect"] + wrk_summary["errors_detail"]["read"] + \
        wrk_summary["errors_detail"]["write"] + wrk_summary["errors_detail"]["timeout"]
    steady_p99 = percentile(steady, 99)
    versions_seen = sorted({r[3] for r in ok if r[3] is not None})
    return {
        "requests": len(rows),
        "seconds": t_last - t_first,
        "rps": len(ok) / (t_last - t_first) if t_last > t_first else float("nan"),
        "failed": non200 + socket_errors,
        "failed_detail": {"non200": non200, **{k: v for k, v in wrk_summary["errors_detail"].items() if k != "non2xx"}},
        "wrk_requests": wrk_summary["requests"],
        "steady_requests": len(steady),
        "steady_p50_ms": percentile(steady, 50),
        "steady_p99_ms": steady_p99,
        "steady_window_p99_median_ms": statistics.median(steady_windows) if steady_windows else float("nan"),
        "steady_window_p99_worst_ms": max(steady_windows) if steady_windows else float("nan"),
        "steady_windows": len(steady_windows),
        "swap_requests": len(swap_all),
        "swap_p99_pooled_ms": percentile(swap_all, 99),
        "swap_window_p99_median_ms": statistics.median(win_p99) if win_p99 else float("nan"),
        "swap_window_p99_worst_ms": max(win_p99) if win_p99 else float("nan"),
        # Like for like: p99s of windows of the same length, with and without a publish.
        "ratio_median": (statistics.median(win_p99) / statistics.median(steady_windows)) if win_p99 and steady_windows else float("nan"),
        "ratio_worst": (max(win_p99) / max(steady_windows)) if win_p99 and steady_windows else float("nan"),
        "ratio_median_vs_pooled": (statistics.median(win_p99) / steady_p99) if win_p99 and steady_p99 > 0 else float("nan"),
        "publishes": len(published),
        "publish_to_served_median_ms": statistics.median(served) if served else float("nan"),
        "publish_to_served_max_ms": max(served) if served else float("nan"),
        "versions_published": [p["version"] for p in published],
        "versions_seen": versions_seen,
        "version_went_backwards": backwards,
        "per_publish": per_publish,
        "client_cpu_pct": wrk_summary["client_cpu_pct"],
    }


def run_swaps(opts, workdir: str, log) -> dict:
    root = os.path.join(workdir, "swaps")
    base = os.path.join(root, "models", MODEL)
    os.makedirs(root, exist_ok=True)
    n_publish = int(opts.swap_duration // opts.swap_interval) + 1
    log(f"swaps: building {n_publish + 1} model versions (make_mlp, seeds 1..{n_publish + 1}) before any load")
    models = _build_models(os.path.join(root, "build"), n_publish + 1)
    from hotserve.repository.publish import publish

    publish(models[0], base)
    client_cpus = {int(c) for c in opts.client_cpus.split(",")}
    server = servers.start_hotserve(base, root, ["tfs-json"])
    try:
        if opts.server_cpus:
            procs.pin_tree(server.pid, {int(c) for c in opts.server_cpus.split(",")})
        payload = make_payload("tfs-json", 1)
        check(payload, server.url, "", reference_output(models[0], payload.x))
        c = opts.swap_concurrency
        if opts.warmup > 0:
            loadgen.run_wrk(server.url, payload, c, opts.warmup, threads=opts.wrk_threads,
                            client_cpus=opts.client_cpus, workdir=root)
        prefix = os.path.join(root, "req-")
        for old in glob.glob(prefix + "*.tsv"):
            os.unlink(old)
        sampler = procs.Sampler(server.pid, cpus=client_cpus)
        sampler.start()
        t0 = time.monotonic()
        pub = _Publisher(models, base, t0, opts.swap_interval, opts.swap_duration, client_cpus)
        pub.start()
        log(f"swaps: wrk -t{c} -c{c} for {opts.swap_duration:g}s on REST TFS JSON batch 1, "
            f"publishing a new version every {opts.swap_interval:g}s")
        try:
            # One wrk thread per connection: swap.lua pairs request() and response() per thread.
            summary = loadgen.run_wrk(server.url, payload, c, opts.swap_duration, threads=c, client_cpus=opts.client_cpus,
                                      workdir=root, script="swap.lua", extra_env={"BENCH_LOG_PREFIX": prefix})
        finally:
            pub.stop_event.set()
            pub.join(30)
            sampler.finish()
        if pub.error is not None:
            raise RuntimeError(f"publishing failed: {pub.error!r}")
        with urllib.request.urlopen(f"{server.url}/v1/models/{MODEL}", timeout=10) as r:
            status_at_end = json.loads(r.read())
    finally:
        server.stop()
    rows, backwards = _read_rows(prefix)
    if not rows:
        raise RuntimeError("swap run recorded no requests")
    result = analyse(rows, pub.published, opts.swap_window, summary, backwards)
    result.update({
        "api": "REST TFS JSON", "batch": 1, "concurrency": c, "duration_s": opts.swap_duration,
        "interval_s": opts.swap_interval, "window_s": opts.swap_window,
        "rss_peak_mib": sampler.peak_mb, "server_cpu_pct": sampler.cpu_pct,
        "status_at_end": status_at_end.get("model_version_status"),
        "lines_vs_wrk": f"{len(rows)} logged / {summary['requests']} counted by wrk",
    })
    log(f"swaps: {result['publishes']} publishes, {result['requests']} requests, failed {result['failed']}, "
        f"steady p99 {result['steady_p99_ms']:.2f} ms, swap-window p99 median {result['swap_window_p99_median_ms']:.2f} ms "
        f"worst {result['swap_window_p99_worst_ms']:.2f} ms, publish->served median {result['publish_to_served_median_ms']:.0f} ms")
    return result
