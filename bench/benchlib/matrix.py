"""Table 1: every server x API x batch x concurrency cell, each a warm-up then a fixed-length
measured run, with the server's RSS and CPU sampled from /proc during the measured run."""

from __future__ import annotations

import time

from benchlib import loadgen, procs
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


def run_matrix(servers: list[Server], opts, model_path: str, workdir: str, log) -> list[dict]:
    pf = preflight(servers, opts.batches, model_path)
    client_cpus = {int(c) for c in opts.client_cpus.split(",")}
    plan = [(b, c, s, api) for b in opts.batches for c in opts.concurrency for s in servers for api in s.apis]
    cells: list[dict] = []
    for i, (b, c, s, api) in enumerate(plan, 1):
        cell = {"server": s.name, "api": api, "api_label": APIS[api].label, "batch": b, "concurrency": c}
        payload = pf["payloads"][(api, b)]
        info = pf["infos"][(s.name, api, b)]
        label = f"[{i}/{len(plan)}] {s.name:<8} {APIS[api].label:<19} batch {b:>2} conc {c:>2}"
        if s.owned.proc.poll() is not None:
            cell["failed"] = f"server exited with {s.owned.proc.returncode} before this cell (log {s.log_path})"
            log(f"{label}: SKIPPED, {cell['failed']}")
            cells.append(cell)
            continue
        try:
            if opts.warmup > 0:
                warm = run_one(s, api, payload, c, opts.warmup, opts, workdir, info)
                cell["warmup_errors"] = warm["errors"]
            sampler = procs.Sampler(s.pid, cpus=client_cpus)
            sampler.start()
            try:
                res = run_one(s, api, payload, c, opts.duration, opts, workdir, info)
            finally:
                sampler.finish()
            cell.update(res)
            cell["rss_mib"] = sampler.peak_mb
            cell["rss_samples"] = sampler.samples
            cell["server_cpu_pct"] = sampler.cpu_pct
            cell["server_processes"] = len(procs.tree_pids(s.pid))
            log(f"{label}: {res['rps']:8.0f} req/s  p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  "
                f"errors {res['errors']}  RSS {sampler.peak_mb:.0f} MiB  srv CPU {sampler.cpu_pct:.0f}%  cli CPU {res['client_cpu_pct']:.0f}%")
        except loadgen.LoadError as exc:
            cell["failed"] = str(exc)
            log(f"{label}: FAILED: {str(exc).splitlines()[0]}")
        cells.append(cell)
        time.sleep(0.2)
    add_ratios(cells)
    return cells


def add_ratios(cells: list[dict]) -> None:
    """hotserve req/s over each peer's req/s for the same batch and concurrency."""
    by_key = {(c["server"], c["batch"], c["concurrency"]): c for c in cells
              if not c["server"].startswith("hotserve") and "rps" in c}
    for c in cells:
        if not c["server"].startswith("hotserve") or "rps" not in c:
            continue
        for peer in ("fastapi", "mlserver"):
            p = by_key.get((peer, c["batch"], c["concurrency"]))
            if p and p["rps"] > 0:
                c[f"ratio_{peer}"] = c["rps"] / p["rps"]
