#!/usr/bin/env python3
"""Continuous learning figures, each against its peer measured in the same run:

    python bench/learning.py                 # ~6 min: logging cost, export speed, freshness and recovery (CTR demo, 150 s)
    python bench/learning.py --quick         # smoke run, ~1 min

1. Prediction logging cost: REST TF Serving JSON, batch 1, concurrency 64 (wrk), on the MLP
   784-256-256-10; one server with logging off and one with --learning_dir and sampling rate
   1.0, both running, under load in turns (27 alternating pairs of 2 s windows). Target: on >= 0.9 x
   off. `--aa` runs the second server with logging off too: what the method reads with no difference.
2. Export: the built-in PyTorch trainer's two ways to write a new version of the CTR model,
   torch.onnx.export vs rewriting the served graph's initializers, at two embedding sizes.
3. Freshness and drift recovery: the CTR demo (hotserve demo --learning) end to end: feedback
   200 -> first prediction by a version trained on it (target p50 <= 2 s, p99 <= 5 s), failed
   requests while the learner publishes, AUC before the drift and at the end, learning on/off.

Writes bench/results/learning.{json,md}. Needs torch (pip install torch==2.13.0), wrk (Debian
package, installed when missing unless --no-install) and taskset.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import procs, session, tools  # noqa: E402
from benchlib.loadgen import run_wrk  # noqa: E402
from benchlib.payloads import make_payload  # noqa: E402
from benchlib.servers import start_hotserve  # noqa: E402

OFF, ON = "logging off", "logging on (rate 1.0)"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def logging_cost(opts, workdir: str, log) -> list[dict]:
    from hotserve.examples import make_mlp
    from hotserve.repository.publish import publish

    base = os.path.join(workdir, "models", "mlp")
    publish(make_mlp(os.path.join(workdir, "build", "model.onnx"), seed=1), base, 1)
    payload = make_payload("tfs-json", 1)
    configs = {
        OFF: [],
        ON: [] if opts.aa else ["--learning_dir", os.path.join(workdir, "learn"), "--prediction_log_sampling_rate", "1"],
    }
    rows = {name: [] for name in configs}
    # Both servers run for the whole measurement and take turns under load, a window each per
    # round: a pair of windows is seconds apart, so the machine's drift (other sessions, the
    # page cache) moves both alike. The idle one sleeps (its prediction log writer waits for a
    # request).
    servers = {}
    try:
        for name, flags in configs.items():
            servers[name] = start_hotserve(base, os.path.join(workdir, f"srv-{len(servers)}"), ["tfs-json"], flags)
            run_wrk(servers[name].url, payload, opts.concurrency, 2.0, threads=1, client_cpus=opts.client_cpus,
                    workdir=workdir)
        for rnd in range(opts.rounds):
            for name, srv in servers.items():
                cpu0 = procs.cpu_seconds(procs.tree_pids(srv.pid))
                r = run_wrk(srv.url, payload, opts.concurrency, opts.seconds, threads=1, client_cpus=opts.client_cpus,
                            workdir=workdir)
                # Server CPU per answered request: what logging adds, less at the mercy of other
                # load on the machine than requests/s.
                r["cpu_us"] = (procs.cpu_seconds(procs.tree_pids(srv.pid)) - cpu0) / max(1, r["ok"]) * 1e6
                rows[name].append(r)
                log(f"  round {rnd + 1} {name:22} {r['rps']:8.0f} req/s  p99 {r['p99_ms']:6.2f} ms  "
                    f"server CPU {r['cpu_us']:6.0f} us/request  errors {r['errors']}")
        import urllib.request

        text = urllib.request.urlopen(servers[ON].url + "/metrics", timeout=10).read().decode()
        m = re.search(r'hotserve_prediction_log_records_total\{model="mlp",outcome="dropped"\} (\S+)', text)
        dropped = float(m.group(1)) if m else 0.0
    finally:
        for srv in servers.values():
            srv.stop()
    out = []
    off = rows[OFF]
    base_rps = statistics.median(r["rps"] for r in off)
    base_cpu = statistics.median(r["cpu_us"] for r in off)
    for name, rs in rows.items():
        rps = statistics.median(r["rps"] for r in rs)
        cpu = statistics.median(r["cpu_us"] for r in rs)
        # Each round's on/off pair ran back to back: their ratio leaves out the machine's drift
        # between rounds, which on a shared machine moves both configs by more than logging does.
        paired = [a["rps"] / b["rps"] for a, b in zip(rs, off)]
        out.append({"config": name, "rps": rps, "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                    "errors": sum(r["errors"] for r in rs), "ratio": rps / base_rps,
                    "paired_ratios": paired, "paired_ratio": statistics.median(paired),
                    "cpu_us": cpu, "cpu_ratio": cpu / base_cpu, "dropped": dropped if name == ON else 0})
    return out


def export_speed(opts, workdir: str, log) -> list[dict]:
    import numpy as np

    from hotserve.learning.ctr import CTRWorld
    from hotserve.learning.torch_trainer import TorchTrainer
    from hotserve.learning.trainer import Batch

    out = []
    for label, kw in (("CTR 500 users x 8", {}),
                      ("CTR 200k users x 32", {"module.n_users": "200000", "module.dim": "32"})):
        world = CTRWorld(0)
        x, p = world.impressions(512)
        batch = Batch(x, {"p": world.clicks(p).reshape(-1, 1)}, np.ones(512, np.float32))
        times = {}
        for mode in ("torch", "initializers"):
            t = TorchTrainer(module="hotserve.learning.ctr:make", export=mode, **kw)
            t.load(None)
            t.export(os.path.join(workdir, f"exp-{mode}-first"))  # the first export is always torch.onnx.export
            samples = []
            for i in range(opts.export_repeats):
                t.update(batch)
                d = os.path.join(workdir, f"exp-{mode}-{i}")
                t.export(d)
                samples.append(t.last_export["seconds"])
            times[mode] = statistics.median(samples)
            size = os.path.getsize(os.path.join(d, "model.onnx"))
        out.append({"model": label, "bytes": size, "torch_ms": times["torch"] * 1e3,
                    "initializers_ms": times["initializers"] * 1e3, "speedup": times["torch"] / times["initializers"]})
        log(f"  {label:22} torch.onnx.export {times['torch'] * 1e3:8.1f} ms   initializers {times['initializers'] * 1e3:7.1f} ms")
    return out


def freshness(opts, workdir: str, log) -> dict:
    from hotserve.learning.demo import run

    s = run(duration=opts.demo_seconds, workdir=os.path.join(workdir, "demo"), png=os.path.join(RESULTS, "learning_demo.png"),
            quiet=True)
    keep = {k: s[k] for k in ("requests", "failures", "feedback_calls", "impressions_labelled", "versions_published",
                              "freshness_p50", "freshness_p99", "freshness_n", "steady_p50", "steady_p99", "steady_n", "auc_span", "auc_on_pre", "auc_on_end", "auc_off_end",
                              "png")}
    log(f"  freshness p50 {keep['freshness_p50']:.3f}s p99 {keep['freshness_p99']:.3f}s over {keep['freshness_n']} feedback "
        f"calls; {keep['versions_published']} versions; failed requests {keep['failures']}")
    keep["windows"] = s["windows"]
    return keep


def render(res: dict) -> str:
    lines = [f"# Continuous learning bench ({res['meta']['kind']} run; commit {res['meta']['commit']}, "
             f"load average at start {res['meta']['loadavg']})", ""]
    if res.get("logging"):
        lines += ["## Prediction logging cost (REST TFS JSON, batch 1, concurrency "
                  f"{res['meta']['concurrency']}, median of {res['meta']['rounds']} rounds of "
                  f"{res['meta']['seconds']:g} s{'; A/A run: both servers with logging off' if res['meta'].get('aa') else ''})", "",
                  "| config | req/s | ratio of medians | median of paired ratios | server CPU us/request | ratio to off "
                  "| p99 ms | dropped records | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["logging"]:
            paired = f"{r['paired_ratio']:.3f}" if "paired_ratio" in r else "-"
            lines.append(f"| {r['config']} | {r['rps']:.0f} | {r['ratio']:.3f} | {paired} | {r['cpu_us']:.0f} | "
                         f"{r['cpu_ratio']:.3f} | {r['p99_ms']:.2f} | {r['dropped']:.0f} | {r['errors']} |")
        per_round = [r for r in res["logging"] if "paired_ratios" in r and r["config"] == ON]
        if per_round:
            lines += ["", "Paired ratio (on / off, same round) per round: "
                      + ", ".join(f"{x:.3f}" for x in per_round[0]["paired_ratios"]) + "."]
        lines.append("")
    if res.get("export"):
        lines += ["## Export of a new version (PyTorch trainer, median)", "",
                  "| model | model.onnx bytes | torch.onnx.export ms | initializer rewrite ms | speedup |",
                  "|---|---:|---:|---:|---:|"]
        for r in res["export"]:
            lines.append(f"| {r['model']} | {r['bytes']} | {r['torch_ms']:.1f} | {r['initializers_ms']:.1f} | {r['speedup']:.1f}x |")
        lines.append("")
    f = res.get("freshness")
    if f:
        lines += ["## Freshness and drift (CTR demo)", "",
                  "| figure | value | target |", "|---|---:|---|",
                  f"| freshness p50 (feedback 200 -> served by a version trained on it) | {f['freshness_p50']:.3f} s | <= 2 s |",
                  f"| freshness p99 | {f['freshness_p99']:.3f} s | <= 5 s |",
                  f"| freshness p50 / p99 after the first learned version served | {f['steady_p50']:.3f} s / {f['steady_p99']:.3f} s | |",
                  f"| feedback calls measured | {f['freshness_n']} | |",
                  f"| learned versions published | {f['versions_published']} | |",
                  f"| failed requests (predict + feedback) | {f['failures']} of {f['requests']} | 0 |",
                  f"| AUC over the {f['auc_span']:g} s before the drift (learning on) | {f['auc_on_pre']:.4f} | |",
                  f"| AUC over the last {f['auc_span']:g} s: learning on / off | {f['auc_on_end']:.4f} / {f['auc_off_end']:.4f} | on within 0.01 of before |",
                  ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 s cells, 1 round, 30 s demo")
    # Many short windows rather than a few long ones: on this shared machine throughput drifts by
    # more than logging costs within a minute, and a pair of windows seconds apart shares the drift.
    ap.add_argument("--seconds", type=float, default=2.0, help="each logging-cost window (default 2)")
    ap.add_argument("--rounds", type=int, default=27, help="alternating off/on rounds of the logging cost (default 27)")
    ap.add_argument("--aa", action="store_true",
                    help="the logging cost's A/A run: the second server with logging off too (the method's own bias)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--client-cpus", dest="client_cpus", default="1")
    ap.add_argument("--export-repeats", dest="export_repeats", type=int, default=5)
    ap.add_argument("--demo-seconds", dest="demo_seconds", type=float, default=None,
                    help="the CTR demo's length (default: the demo's own, 150 s)")
    ap.add_argument("--only", choices=["logging", "export", "freshness"], action="append")
    ap.add_argument("--no-install", dest="no_install", action="store_true")
    opts = ap.parse_args()
    if opts.quick:
        opts.seconds, opts.rounds, opts.demo_seconds, opts.export_repeats = 3.0, 1, 30.0, 3
    if opts.demo_seconds is None:
        from hotserve.learning.demo import DEFAULT_SECONDS

        opts.demo_seconds = DEFAULT_SECONDS
    log = session.begin()
    parts = opts.only or ["logging", "export", "freshness"]
    res = {"meta": {"kind": "quick" if opts.quick else "full", "commit": session.git_commit(), "loadavg": session.loadavg(),
                    "concurrency": opts.concurrency, "rounds": opts.rounds, "seconds": opts.seconds, "aa": opts.aa}}
    os.makedirs(RESULTS, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hotserve-bench-learning-") as workdir, session.guarded(res, log) as state:
        if "logging" in parts:
            tools.ensure_binary("wrk", "wrk", not opts.no_install)
            tools.ensure_binary("taskset", "util-linux", not opts.no_install)
            log("prediction logging cost")
            res["logging"] = logging_cost(opts, workdir, log)
        if "export" in parts:
            log("export speed")
            res["export"] = export_speed(opts, workdir, log)
        if "freshness" in parts:
            log(f"freshness: the CTR demo for {opts.demo_seconds:g}s")
            res["freshness"] = freshness(opts, workdir, log)
    text = render(res)
    print("\n" + text)
    with open(os.path.join(RESULTS, "learning.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(RESULTS, "learning.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    return 1 if state.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
