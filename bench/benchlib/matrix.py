"""Table 1: every server x API x batch x concurrency cell, each a warm-up then a fixed-length
measured run, with the server's RSS and CPU sampled from /proc during the measured run;
`--rounds` alternating rounds of the whole matrix, and the median of each cell."""

from __future__ import annotations

import math
import statistics
import time

from benchlib import loadgen, procs
from benchlib.lineup import PEERS, REFERENCE, is_hotserve
from benchlib.payloads import APIS, CheckError, check, make_payload, reference_output
from benchlib.servers import Server


def preflight(servers: list[Server], batches: list[int], model_path: str) -> dict:
    """One request per server/API/batch, compared with onnxruntime's answer. Returns
    {(server, api, batch): info}; a failing check is fatal (the row would measure errors)."""
    payloads, infos = {}, {}
    refs = {}
    for b in batches:
        for s in servers:
            for api in s.apis:
                p = payloads.setdefault((api, b), make_payload(api, b))
                if b not in refs:
                    refs[b] = reference_output(model_path, p.x)
                try:
                    infos[(s.name, api, b)] = check(p, s.url, s.grpc_target, refs[b])
                except CheckError as exc:
                    raise CheckError(f"{s.name}: {exc}") from None
    return {"payloads": payloads, "infos": infos}


def run_one(server: Server, api: str, payload, concurrency: int, duration: float, opts, workdir: str, info: dict) -> dict:
    if APIS[api].proto == "http":
        return loadgen.run_wrk(server.url, payload, concurrency, duration, threads=opts.wrk_threads,
                               client_cpus=opts.client_cpus, workdir=workdir)
    return loadgen.run_h2load(server.grpc_target, payload, concurrency, duration, client_cpus=opts.client_cpus,
                              workdir=workdir, response_frame_bytes=info["response_frame_bytes"])


def plan_round(servers: list[Server], batches: list[int], concurrency: list[int], round_index: int) -> list[tuple]:
    """One round: for each batch and concurrency, every server's APIs back to back, so a slow
    drift of a noisy machine hits every server alike. The server order rotates by one each
    round, so no server always runs first (or right after the same neighbour)."""
    k = round_index % len(servers) if servers else 0
    order = servers[k:] + servers[:k]
    return [(b, c, s, api) for b in batches for c in concurrency for s in order for api in s.apis]


def measure(s: Server, api: str, payload, c: int, opts, workdir: str, info: dict, client_cpus: set[int]) -> dict:
    """One warm-up run (not measured) and one measured run of a cell, with the server's RSS
    and CPU sampled meanwhile. A failed run returns {"failed": reason}."""
    if s.owned.proc.poll() is not None:
        return {"failed": f"server exited with {s.owned.proc.returncode} before this cell (log {s.log_path})"}
    m: dict = {}
    try:
        if opts.warmup > 0:
            m["warmup_errors"] = run_one(s, api, payload, c, opts.warmup, opts, workdir, info)["errors"]
        sampler = procs.Sampler(s.pid, cpus=client_cpus)
        sampler.start()
        try:
            res = run_one(s, api, payload, c, opts.duration, opts, workdir, info)
        finally:
            sampler.finish()
    except loadgen.LoadError as exc:
        return {**m, "failed": str(exc)}
    m.update(res)
    m.update(rss_mib=sampler.peak_mb, rss_samples=sampler.samples, server_cpu_pct=sampler.cpu_pct,
             server_processes=len(procs.tree_pids(s.pid)))
    return m


MEDIAN_KEYS = ("seconds", "rps", "rows_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms",
               "rss_mib", "server_cpu_pct", "client_cpu_pct", "client_cpu_s")
SUM_KEYS = ("requests", "ok", "errors")


def combine(cell: dict, runs: list[dict]) -> dict:
    """A cell's figures over its rounds: the median of each measure (taken one measure at a
    time), errors and requests summed, the req/s spread ((max - min) / median), the
    highest RSS seen; every round's figures stay in cell["runs"]."""
    ok = [r for r in runs if "failed" not in r]
    bad = [r for r in runs if "failed" in r]
    out = dict(cell, runs=runs, rounds=len(runs), rounds_ok=len(ok))
    if bad:
        out["failed_rounds"] = [f"round {r['round']}: {r['failed'].splitlines()[0]}" for r in bad]
    if not ok:
        out["failed"] = bad[0]["failed"]
        return out
    for k in MEDIAN_KEYS:
        vals = [r[k] for r in ok if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
        if vals:
            out[k] = statistics.median(vals)
    for k in SUM_KEYS:
        out[k] = sum(r.get(k, 0) for r in ok)
    detail: dict = {}
    for r in ok:
        for k, v in r.get("errors_detail", {}).items():
            detail[k] = detail.get(k, 0) + v
    out["errors_detail"] = detail
    out["tool"] = ok[0].get("tool")
    out["rss_mib_max"] = max(r["rss_mib"] for r in ok)
    out["server_processes"] = max(r.get("server_processes", 0) for r in ok)
    rps = [r["rps"] for r in ok]
    out["rps_rounds"] = rps
    if len(rps) > 1 and out["rps"] > 0:
        out["rps_spread_pct"] = 100.0 * (max(rps) - min(rps)) / out["rps"]
    return out


def run_matrix(servers: list[Server], opts, model_path: str, workdir: str, log) -> list[dict]:
    pf = preflight(servers, opts.batches, model_path)
    client_cpus = {int(c) for c in opts.client_cpus.split(",")}
    runs: dict[tuple, list[dict]] = {}
    n_plan = len(plan_round(servers, opts.batches, opts.concurrency, 0))
    for r in range(opts.rounds):
        plan = plan_round(servers, opts.batches, opts.concurrency, r)
        log(f"round {r + 1}/{opts.rounds}: server order {', '.join(dict.fromkeys(s.name for _b, _c, s, _a in plan))}")
        for i, (b, c, s, api) in enumerate(plan, 1):
            label = f"[round {r + 1}/{opts.rounds} {i}/{n_plan}] {s.name:<13} {APIS[api].label:<19} batch {b:>2} conc {c:>2}"
            m = measure(s, api, pf["payloads"][(api, b)], c, opts, workdir, pf["infos"][(s.name, api, b)], client_cpus)
            m["round"] = r + 1
            runs.setdefault((s.name, api, b, c), []).append(m)
            if "failed" in m:
                log(f"{label}: FAILED: {m['failed'].splitlines()[0]}")
            else:
                log(f"{label}: {m['rps']:8.0f} req/s  p50 {m['p50_ms']:7.2f} ms  p99 {m['p99_ms']:7.2f} ms  "
                    f"errors {m['errors']}  RSS {m['rss_mib']:.0f} MiB  srv CPU {m['server_cpu_pct']:.0f}%  "
                    f"cli CPU {m['client_cpu_pct']:.0f}%")
            time.sleep(0.2)
    # Table order: batch, concurrency, then the servers as given (not as rotated).
    cells = []
    for b, c, s, api in plan_round(servers, opts.batches, opts.concurrency, 0):
        base = {"server": s.name, "api": api, "api_label": APIS[api].label, "batch": b, "concurrency": c}
        cells.append(combine(base, runs[(s.name, api, b, c)]))
    add_ratios(cells)
    return cells


def add_ratios(cells: list[dict]) -> None:
    """req/s over each peer's req/s at the same batch and concurrency, against the peer's cell
    with the same API when it has one, else against the peer's first API (its JSON format).
    hotserve rows get a ratio for every peer; peer rows only against the lean app (the
    reference of issue 10's targets)."""
    index = {(c["server"], c["api"], c["batch"], c["concurrency"]): c for c in cells if "rps" in c}
    first_api: dict[str, str] = {}
    for c in cells:
        first_api.setdefault(c["server"], c["api"])
    for c in cells:
        if "rps" not in c:
            continue
        for peer in PEERS:
            if peer == c["server"] or (not is_hotserve(c["server"]) and peer != REFERENCE):
                continue
            p = index.get((peer, c["api"], c["batch"], c["concurrency"])) or \
                index.get((peer, first_api.get(peer), c["batch"], c["concurrency"]))
            if p and p["rps"] > 0:
                c[f"ratio_{peer}"] = c["rps"] / p["rps"]
