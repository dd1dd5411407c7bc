#!/usr/bin/env python3
"""hotserve benchmark: one command, two tables.

    python bench/run.py            # full run (~10 min): table 1 (hotserve vs FastAPI vs MLServer) + table 2 (swaps under load)
    python bench/run.py --quick    # ~1 min smoke run: 2 s cells, concurrency 8 only, 8 s swap run

Run it with the project's interpreter (the venv where hotserve is installed). See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

from benchlib import procs, report, session, tools  # noqa: E402

PARTS = ("hotserve", "hotserve-2w", "fastapi", "mlserver", "swaps")
# hotserve's shapes on this 2-core machine: one process with its defaults, and the tuned one:
# --num_workers 2 with one onnxruntime thread per worker (the workers, not intra-op threads,
# use the second core) and --inference_threading auto (no thread hop for a sub-ms model).
HOTSERVE_SHAPES = {
    "hotserve": [],
    "hotserve-2w": ["--num_workers", "2", "--tensorflow_intra_op_parallelism", "1", "--inference_threading", "auto"],
}
DEFAULT_HOTSERVE_APIS = "tfs-json,v2-json,v2-bin,grpc-v2,grpc-tfs"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --duration 2 --warmup 1 --concurrency 8 --swap-duration 8 (explicit options still win)")
    p.add_argument("--duration", type=float, help="measured seconds per cell (default 10; whole seconds)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each cell, not measured (default 2; 0 = none)")
    p.add_argument("--batches", type=_ints, help="rows per request (default 1,32)")
    p.add_argument("--concurrency", type=_ints, help="connections kept busy (default 1,8,64)")
    p.add_argument("--only", help=f"comma list of parts to run, from {','.join(PARTS)} (default: all)")
    p.add_argument("--skip-mlserver", action="store_true", help="leave MLServer out (no venv install)")
    p.add_argument("--skip-fastapi", action="store_true", help="leave the FastAPI peer out")
    p.add_argument("--skip-swaps", action="store_true", help="leave table 2 out")
    p.add_argument("--hotserve-apis", default=DEFAULT_HOTSERVE_APIS,
                   help=f"hotserve APIs in table 1 (default {DEFAULT_HOTSERVE_APIS})")
    p.add_argument("--swap-duration", type=float, help="seconds of load in table 2 (default 20)")
    p.add_argument("--swap-interval", type=float, default=2.0, help="seconds between publishes (default 2)")
    p.add_argument("--swap-concurrency", type=int, default=8, help="connections in table 2 (default 8)")
    p.add_argument("--swap-window", type=float, default=1.0, help="seconds after a publish counted as its swap window (default 1)")
    p.add_argument("--hotserve-src", action="append", default=[], metavar="LABEL=PATH",
                   help="also run hotserve (default flags) from another source tree, e.g. an older commit checked out with "
                        "`git worktree add /tmp/old <commit>`: LABEL=/tmp/old/src (repeatable); compares commits in one run")
    p.add_argument("--client-cpus", default="1", help="CPU list the load tools (and the bench's own samplers/publisher) are pinned to (default 1)")
    p.add_argument("--server-cpus", default="", help="pin every server to this CPU list (default: not pinned, servers may use every core)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads in table 1 (default 1: one event loop saturates one core best)")
    p.add_argument("--fastapi-workers", type=int, default=2, help="uvicorn workers of the FastAPI peer (default 2)")
    p.add_argument("--no-install", action="store_true", help="never apt-get/pip install; fail instead")
    p.add_argument("--results-dir", default=os.path.join(BENCH_DIR, "results"), help="where latest.json / latest.md go")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory (models, server logs)")
    o = p.parse_args(argv)
    quick = o.quick
    o.duration = o.duration if o.duration is not None else (2 if quick else 10)
    o.warmup = o.warmup if o.warmup is not None else (1 if quick else 2)
    o.batches = o.batches or [1, 32]
    o.concurrency = o.concurrency or ([8] if quick else [1, 8, 64])
    o.swap_duration = o.swap_duration if o.swap_duration is not None else (8 if quick else 20)
    parts = set(PARTS) if not o.only else {x.strip() for x in o.only.split(",") if x.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        p.error(f"--only: unknown part(s) {sorted(unknown)}; choose from {','.join(PARTS)}")
    for flag, part in ((o.skip_mlserver, "mlserver"), (o.skip_fastapi, "fastapi"), (o.skip_swaps, "swaps")):
        if flag:
            parts.discard(part)
    o.parts = parts
    o.hotserve_apis = [a.strip() for a in o.hotserve_apis.split(",") if a.strip()]
    from benchlib.payloads import APIS
    bad = [a for a in o.hotserve_apis if a not in APIS]
    if bad:
        p.error(f"--hotserve-apis: unknown {bad}; choose from {','.join(APIS)}")
    if o.duration < 1 or o.swap_duration < 2 * o.swap_interval:
        p.error("--duration must be >= 1 and --swap-duration at least twice --swap-interval")
    ncpu = os.cpu_count() or 1
    for cpus in (o.client_cpus, o.server_cpus):
        if cpus and any(c >= ncpu for c in _ints(cpus)):
            p.error(f"CPU list {cpus} names a CPU this machine does not have (it has {ncpu})")
    return o


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    log = session.begin()

    extra_src = {(k if k.startswith("hotserve") else f"hotserve-{k}"): v
                 for k, v in (item.split("=", 1) for item in opts.hotserve_src)}
    matrix_servers = [s for s in ("hotserve", "hotserve-2w") if s in opts.parts] + list(extra_src) + \
        [s for s in ("fastapi", "mlserver") if s in opts.parts]
    needs_grpc = bool(set(HOTSERVE_SHAPES) & opts.parts) and any(a.startswith("grpc") for a in opts.hotserve_apis)
    versions = {"python": platform.python_version()}
    try:
        log("checking tools")
        tools.ensure_binary("taskset", "util-linux", not opts.no_install)
        tools.ensure_binary("wrk", "wrk", not opts.no_install)
        versions["wrk"] = tools.tool_version(["wrk", "-v"])
        if needs_grpc:
            tools.ensure_binary("h2load", "nghttp2-client", not opts.no_install)
            versions["h2load"] = tools.tool_version(["h2load", "--version"])
        if "fastapi" in opts.parts:
            versions["fastapi"] = tools.check_fastapi()
        mlserver_exe = None
        if "mlserver" in opts.parts:
            mlserver_exe, versions["mlserver"] = tools.ensure_mlserver(not opts.no_install)
        import onnxruntime
        versions["onnxruntime (hotserve, FastAPI)"] = onnxruntime.__version__
    except tools.ToolError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    workdir = tempfile.mkdtemp(prefix="hotserve-bench-")
    results: dict = {"meta": {
        "mode": "quick" if opts.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "loadavg_start": session.loadavg(),
        "client_cpus": opts.client_cpus, "server_cpus": opts.server_cpus,
        "duration_s": opts.duration, "warmup_s": opts.warmup,
        "batches": opts.batches, "concurrency": opts.concurrency,
        "parts": sorted(opts.parts), "hotserve_apis": opts.hotserve_apis,
        "wrk_threads": opts.wrk_threads, "fastapi_workers": opts.fastapi_workers,
        "hotserve_commit": session.git_commit(), "versions": versions,
        "workdir": workdir,
    }}
    with session.guarded(results, log, "server") as run:
        if matrix_servers:
            results["matrix"] = _run_matrix(opts, matrix_servers, mlserver_exe, workdir, log, extra_src)
        if "swaps" in opts.parts:
            from benchlib import swaps
            try:
                results["swaps"] = swaps.run_swaps(opts, workdir, log)
            except (RuntimeError, OSError) as exc:
                run.failed = True
                results["swaps_error"] = str(exc)
                log(f"swaps: FAILED: {exc}")
                traceback.print_exc()
    failed = run.failed
    if results.get("matrix") or results.get("swaps") or results.get("swaps_error"):
        text, jpath, mpath = report.write(results, opts.results_dir)
        print()
        print(text)
        print(f"written: {os.path.relpath(jpath)}, {os.path.relpath(mpath)} (total {results['meta']['elapsed_s']:.0f} s)")
    failed = failed or any("failed" in c or c.get("errors") for c in results.get("matrix", [])) or \
        bool(results.get("swaps") and results["swaps"]["failed"])
    if opts.keep_workdir or failed:
        print(f"work directory kept (models, server logs): {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _run_matrix(opts, names: list[str], mlserver_exe: str | None, workdir: str, log,
                extra_src: dict[str, str] | None = None) -> list[dict]:
    from hotserve.examples import make_mlp
    from hotserve.repository.publish import publish

    from benchlib import matrix, servers

    model_path = make_mlp(os.path.join(workdir, "model", "model.onnx"), seed=1)
    started: list[servers.Server] = []
    try:
        for name in names:
            t0 = time.monotonic()
            if name in HOTSERVE_SHAPES or name in (extra_src or {}):
                base = os.path.join(workdir, name, "models", "mlp")
                publish(model_path, base)
                srv = servers.start_hotserve(base, os.path.join(workdir, name), opts.hotserve_apis,
                                             HOTSERVE_SHAPES.get(name, []), name=name, src=(extra_src or {}).get(name))
            elif name == "fastapi":
                srv = servers.start_fastapi(model_path, workdir, workers=opts.fastapi_workers)
            else:
                srv = servers.start_mlserver(mlserver_exe, model_path, workdir)
            if opts.server_cpus:
                procs.pin_tree(srv.pid, set(_ints(opts.server_cpus)))
            started.append(srv)
            log(f"started {name}: {srv.url}{' grpc ' + srv.grpc_target if srv.grpc_target else ''} "
                f"({len(procs.tree_pids(srv.pid))} processes, ready in {time.monotonic() - t0:.1f}s)")
        n_cells = len(opts.batches) * len(opts.concurrency) * sum(len(s.apis) for s in started)
        per_cell = opts.duration + opts.warmup + 0.5
        log(f"table 1: {n_cells} cells x ({opts.warmup:g} s warm-up + {opts.duration:g} s) ~ {n_cells * per_cell / 60:.1f} min; "
            f"all servers stay up, cells interleave servers so machine noise hits them alike")
        return matrix.run_matrix(started, opts, model_path, workdir, log)
    finally:
        for srv in reversed(started):
            srv.stop()


if __name__ == "__main__":
    sys.exit(main())
