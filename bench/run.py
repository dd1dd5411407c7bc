#!/usr/bin/env python3
"""hotserve benchmark: one command, two tables and issue 10's targets.

    python bench/run.py            # full run (~45 min): table 1 (hotserve vs the lean app, FastAPI naive, KServe,
                                   # MLServer; median of 3 alternating rounds) + table 2 (swaps under load) + targets
    python bench/run.py --quick    # smoke run (~6 min): 2 s cells, concurrency 8 only, 8 s swap run
    python bench/run.py --quick --rounds 1 --concurrency 1,64   # smoke run that also checks every target (~4 min)

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
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

from benchlib import lineup, procs, report, session, targets, tools  # noqa: E402

HOTSERVE_SHAPES = ("hotserve", "hotserve-2w")
PARTS = (*HOTSERVE_SHAPES, *lineup.PEERS, "swaps")
DEFAULT_HOTSERVE_APIS = "tfs-json,v2-json,v2-bin,grpc-v2,grpc-tfs"
# KServe's V1 protocol is TF Serving's REST JSON at the same path ("tfs-json").
KSERVE_APIS = ("tfs-json", "v2-json", "v2-bin", "grpc-v2")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str, aliases: dict[str, str] | None = None) -> list[str]:
    return [(aliases or {}).get(x.strip(), x.strip()) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --duration 2 --warmup 1 --concurrency 8 --swap-duration 8 (explicit options still win)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds of the whole matrix; each cell reports the median and the spread (default 3)")
    p.add_argument("--duration", type=float, help="measured seconds per cell and round (default 5; whole seconds)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each cell, not measured (default 2; 0 = none)")
    p.add_argument("--batches", type=_ints, help="rows per request (default 1,32)")
    p.add_argument("--concurrency", type=_ints, help="connections kept busy (default 1,8,64)")
    p.add_argument("--peers", default=lineup.DEFAULT_PEERS,
                   help=f"comma list of peers in table 1, from {','.join(lineup.PEERS)} (default: all of them; "
                        f"'fastapi' = fastapi-naive)")
    p.add_argument("--only", help=f"comma list of parts to run, from {','.join(PARTS)} (default: all; "
                                  f"'fastapi' = fastapi-naive)")
    p.add_argument("--skip-lean", action="store_true", help="leave the lean app out")
    p.add_argument("--skip-fastapi", action="store_true", help="leave the naive FastAPI peer out")
    p.add_argument("--skip-kserve", action="store_true", help="leave KServe out (no venv install)")
    p.add_argument("--skip-mlserver", action="store_true", help="leave MLServer out (no venv install)")
    p.add_argument("--skip-swaps", action="store_true", help="leave table 2 out")
    p.add_argument("--hotserve-apis", default=DEFAULT_HOTSERVE_APIS,
                   help=f"hotserve APIs in table 1 (default {DEFAULT_HOTSERVE_APIS})")
    p.add_argument("--hotserve-tuned-flags", default=" ".join(lineup.TUNED_FLAGS),
                   help=f"flags of the second hotserve shape, hotserve-2w (default: {' '.join(lineup.TUNED_FLAGS)})")
    p.add_argument("--kserve-apis", default=",".join(KSERVE_APIS),
                   help=f"KServe APIs in table 1 (default {','.join(KSERVE_APIS)}; tfs-json is KServe's V1 protocol)")
    p.add_argument("--kserve-workers", type=int, default=1, help="kserve ModelServer --workers (default 1, kserve's default)")
    p.add_argument("--lean-workers", type=int, default=2, help="uvicorn workers of the lean app (default 2, as issue 10 defines it)")
    p.add_argument("--swap-duration", type=float, help="seconds of load in table 2 (default 20)")
    p.add_argument("--swap-interval", type=float, default=2.0, help="seconds between publishes (default 2)")
    p.add_argument("--swap-concurrency", type=int, default=8, help="connections in table 2 (default 8)")
    p.add_argument("--swap-window", type=float, default=1.0, help="seconds after a publish counted as its swap window (default 1)")
    p.add_argument("--hotserve-src", action="append", default=[], metavar="LABEL=PATH",
                   help="also run hotserve (default flags) from another source tree, e.g. an older commit checked out with "
                        "`git worktree add /tmp/old <commit>`: LABEL=/tmp/old/src (repeatable); compares commits in one run")
    p.add_argument("--hotserve-src-flags", default="", metavar="FLAGS",
                   help="flags for the --hotserve-src servers (default none: each commit's own defaults); give flags every "
                        "compared commit knows to compare the same shape, e.g. '--tensorflow_intra_op_parallelism 1'")
    p.add_argument("--client-cpus", default="1", help="CPU list the load tools (and the bench's own samplers/publisher) are pinned to (default 1)")
    p.add_argument("--server-cpus", default="", help="pin every server to this CPU list (default: not pinned, servers may use every core)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads in table 1 (default 1: one event loop saturates one core best)")
    p.add_argument("--fastapi-workers", type=int, default=2, help="uvicorn workers of the naive FastAPI peer (default 2)")
    p.add_argument("--no-install", action="store_true", help="never apt-get/pip install; fail instead")
    p.add_argument("--results-dir", default=os.path.join(BENCH_DIR, "results"), help="where latest.json / latest.md go")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory (models, server logs)")
    p.add_argument("--render", metavar="JSON",
                   help="measure nothing: print the tables and targets of a saved run (e.g. bench/results/latest.json) "
                        "and rewrite its .md beside it")
    o = p.parse_args(argv)
    quick = o.quick
    o.duration = o.duration if o.duration is not None else (2 if quick else 5)
    o.warmup = o.warmup if o.warmup is not None else (1 if quick else 2)
    o.batches = o.batches or [1, 32]
    o.concurrency = o.concurrency or ([8] if quick else [1, 8, 64])
    o.swap_duration = o.swap_duration if o.swap_duration is not None else (8 if quick else 20)
    peers = _names(o.peers, lineup.PEER_ALIASES)
    bad = [x for x in peers if x not in lineup.PEERS]
    if bad:
        p.error(f"--peers: unknown {bad}; choose from {','.join(lineup.PEERS)}")
    parts = set(HOTSERVE_SHAPES) | set(peers) | {"swaps"}
    if o.only:
        only = set(_names(o.only, lineup.PEER_ALIASES))
        unknown = only - set(PARTS)
        if unknown:
            p.error(f"--only: unknown part(s) {sorted(unknown)}; choose from {','.join(PARTS)}")
        parts &= only
    for flag, part in ((o.skip_lean, "lean"), (o.skip_fastapi, "fastapi-naive"), (o.skip_kserve, "kserve"),
                       (o.skip_mlserver, "mlserver"), (o.skip_swaps, "swaps")):
        if flag:
            parts.discard(part)
    o.parts = parts
    from benchlib.payloads import APIS
    o.hotserve_apis = _names(o.hotserve_apis)
    bad = [a for a in o.hotserve_apis if a not in APIS]
    if bad:
        p.error(f"--hotserve-apis: unknown {bad}; choose from {','.join(APIS)}")
    o.kserve_apis = _names(o.kserve_apis)
    bad = [a for a in o.kserve_apis if a not in KSERVE_APIS]
    if bad or not o.kserve_apis:
        p.error(f"--kserve-apis: unknown {bad}; choose one or more from {','.join(KSERVE_APIS)}")
    o.hotserve_tuned_flags = o.hotserve_tuned_flags.split()
    if o.rounds < 1 or o.duration < 1 or o.swap_duration < 2 * o.swap_interval:
        p.error("--rounds and --duration must be >= 1 and --swap-duration at least twice --swap-interval")
    ncpu = os.cpu_count() or 1
    for cpus in (o.client_cpus, o.server_cpus):
        if cpus and any(c >= ncpu for c in _ints(cpus)):
            p.error(f"CPU list {cpus} names a CPU this machine does not have (it has {ncpu})")
    return o


def render_saved(path: str) -> int:
    """Tables and targets of a saved run, with this checkout's report code."""
    import json

    with open(path) as f:
        results = json.load(f)
    results["targets"] = targets.evaluate(results.get("matrix") or [], results.get("swaps"), results["meta"])
    text, md = report.render(results)
    print(text)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.render:
        return render_saved(opts.render)
    log = session.begin()

    extra_src = {(k if k.startswith("hotserve") else f"hotserve-{k}"): v
                 for k, v in (item.split("=", 1) for item in opts.hotserve_src)}
    matrix_servers = [s for s in HOTSERVE_SHAPES if s in opts.parts] + list(extra_src) + \
        [s for s in lineup.PEERS if s in opts.parts]
    needs_grpc = (bool(set(HOTSERVE_SHAPES) & opts.parts or extra_src) and any(a.startswith("grpc") for a in opts.hotserve_apis)) \
        or ("kserve" in opts.parts and any(a.startswith("grpc") for a in opts.kserve_apis))
    versions = {"python": platform.python_version()}
    try:
        log("checking tools")
        tools.ensure_binary("taskset", "util-linux", not opts.no_install)
        tools.ensure_binary("wrk", "wrk", not opts.no_install)
        versions["wrk"] = tools.tool_version(["wrk", "-v"])
        if needs_grpc:
            tools.ensure_binary("h2load", "nghttp2-client", not opts.no_install)
            versions["h2load"] = tools.tool_version(["h2load", "--version"])
        if {"lean", "fastapi-naive"} & opts.parts:
            versions["fastapi peers"] = tools.check_fastapi_peers()
        peer_tools: dict[str, str] = {}
        if "kserve" in opts.parts:
            peer_tools["kserve"], versions["kserve"] = tools.ensure_kserve(not opts.no_install)
        if "mlserver" in opts.parts:
            peer_tools["mlserver"], versions["mlserver"] = tools.ensure_mlserver(not opts.no_install)
        import onnxruntime
        versions["onnxruntime"] = onnxruntime.__version__
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
        "rounds": opts.rounds,
        "wrk_threads": opts.wrk_threads, "fastapi_workers": opts.fastapi_workers,
        "lean_workers": opts.lean_workers, "kserve_workers": opts.kserve_workers, "kserve_apis": opts.kserve_apis,
        "hotserve_tuned_flags": opts.hotserve_tuned_flags, "hotserve_src": extra_src,
        "hotserve_src_flags": opts.hotserve_src_flags,
        "hotserve_commit": session.git_commit(), "versions": versions,
        "workdir": workdir,
    }}
    with session.guarded(results, log, "server") as run:
        if matrix_servers:
            results["matrix"] = _run_matrix(opts, matrix_servers, peer_tools, workdir, log, extra_src)
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
    if results.get("matrix") or results.get("swaps"):
        results["targets"] = targets.evaluate(results.get("matrix") or [], results.get("swaps"), results["meta"])
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


def _run_matrix(opts, names: list[str], peer_tools: dict[str, str], workdir: str, log,
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
                flags = (opts.hotserve_tuned_flags if name == "hotserve-2w"
                         else opts.hotserve_src_flags.split() if name in (extra_src or {}) else [])
                srv = servers.start_hotserve(base, os.path.join(workdir, name), opts.hotserve_apis,
                                             flags, name=name, src=(extra_src or {}).get(name))
            elif name == "lean":
                srv = servers.start_lean(model_path, workdir, workers=opts.lean_workers)
            elif name == "fastapi-naive":
                srv = servers.start_fastapi_naive(model_path, workdir, workers=opts.fastapi_workers)
            elif name == "kserve":
                srv = servers.start_kserve(peer_tools["kserve"], model_path, workdir, opts.kserve_apis, workers=opts.kserve_workers)
            else:
                srv = servers.start_mlserver(peer_tools["mlserver"], model_path, workdir)
            if opts.server_cpus:
                procs.pin_tree(srv.pid, set(_ints(opts.server_cpus)))
            started.append(srv)
            log(f"started {name}: {srv.url}{' grpc ' + srv.grpc_target if srv.grpc_target else ''} "
                f"({len(procs.tree_pids(srv.pid))} processes, ready in {time.monotonic() - t0:.1f}s)")
        n_cells = len(opts.batches) * len(opts.concurrency) * sum(len(s.apis) for s in started)
        per_cell = opts.duration + opts.warmup + 0.7
        log(f"table 1: {n_cells} cells x {opts.rounds} round(s) x ({opts.warmup:g} s warm-up + {opts.duration:g} s) ~ "
            f"{n_cells * opts.rounds * per_cell / 60:.1f} min; all servers stay up, each round interleaves the servers "
            f"(order rotated per round) so machine noise hits them alike")
        return matrix.run_matrix(started, opts, model_path, workdir, log)
    finally:
        for srv in reversed(started):
            srv.stop()


if __name__ == "__main__":
    sys.exit(main())
