#!/usr/bin/env python3
"""Live parameter updates (issue 12), each figure beside its peer measured in the same run:

    python bench/parameters.py            # ~3 min
    python bench/parameters.py --quick    # smoke run, ~1 min (smaller table, shorter phases)

1. Freshness of a 10,000-row x 64 update to a 1,000,000 x 64 float32 embedding table (256 MB)
   of an ONNX CTR model: from sending the POST to the first prediction served with it (p50,
   p99; target p50 <= 100 ms, p99 <= 250 ms), and the server's own applied_ms. Peer: the same
   change as a new full version (publish, load, swap), the way a model server without deltas
   does it.
2. Predictions at concurrency 16 while 10 deltas/s (1,000 rows each) arrive for 30 s: failed
   requests (target 0) and p99 against the steady p99 without deltas (target <= 1.2x).
3. Memory: server RSS growth per 10,000-row delta against the delta's bytes (target <= 2x),
   over the first deltas (each keeps its undo for rollback, within the kept history) and after
   the history is full (only what is kept moves).
4. Freshness through the learner with --publish deltas on the learning issue's CTR example:
   a label's arrival in the feedback store to the revision serving a delta trained on it
   (target p50 <= 500 ms, p99 <= 1 s). Needs torch (pip install torch==2.13.0).

Writes bench/results/parameters.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import httpx
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from hotserve.examples import make_embedding_model  # noqa: E402
from hotserve.launcher import ServerProcess  # noqa: E402
from hotserve.repository.publish import publish  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TOKEN = "bench"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DENSE = 16


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def sample_rows(rng, rows: int, n: int) -> np.ndarray:
    """n distinct row indices (rng.choice without replacement permutes the whole range: slow at 1M)."""
    out = np.unique(rng.integers(0, rows, n + n // 4 + 16))
    while len(out) < n:
        out = np.unique(np.concatenate([out, rng.integers(0, rows, n)]))
    return rng.permutation(out)[:n]


def delta_bytes(rows: np.ndarray, values: np.ndarray) -> bytes:
    from safetensors.numpy import save

    return save({"item_embedding.rows": rows.astype(np.int64), "item_embedding.values": values})


def start(base: str, workdir: str, name: str, *flags: str) -> ServerProcess:
    args = ["--model_name", "m", "--model_base_path", base, "--admin_token", TOKEN, "--file_system_poll_wait_seconds", "0.2",
            "--tensorflow_intra_op_parallelism", "1", "--rest_api_max_body_bytes", str(512 << 20), *flags]
    server = ServerProcess(args, os.path.join(workdir, f"{name}.log"))
    server.start(timeout=120)
    server.wait_ready(timeout=300)
    return server


def predict(client: httpx.Client, url: str, items: list[int]) -> httpx.Response:
    return client.post(url + "/v1/models/m:predict",
                       json={"inputs": {"item": items, "dense": [[0.0] * DENSE] * len(items)}})


# -- 1. freshness of one 10k-row delta vs a full version ----------------------------------------
def freshness(server: ServerProcess, base: str, build: str, rows: int, dim: int, trials: int, full_trials: int,
              log) -> dict:
    rng = np.random.default_rng(1)
    totals, applied, posts = [], [], []
    with httpx.Client(timeout=120) as client:
        predict(client, server.url, [0])
        for i in range(trials):
            touched = sample_rows(rng, rows, 10_000)
            values = rng.standard_normal((10_000, dim)).astype(np.float32)
            body = delta_bytes(touched, values)
            probe = [int(touched[0])]
            t0 = time.perf_counter()
            r = client.post(f"{server.url}/v1/models/m/versions/1:update_parameters", content=body,
                            headers={**AUTH, "Content-Type": "application/x-safetensors"})
            t_post = time.perf_counter()
            assert r.status_code == 200, r.text
            want = r.json()["revision"]
            while True:  # the first prediction served with it (the next one, since the 200 came after the switch)
                p = predict(client, server.url, probe)
                if int(p.headers["x-model-revision"]) >= want:
                    break
            totals.append((time.perf_counter() - t0) * 1000)
            posts.append((t_post - t0) * 1000)
            applied.append(r.json()["applied_ms"])
        log(f"  delta: p50 {pct(totals, 50):.1f} ms over {trials}")
        # Peer: the same kind of change as a full new version (write 256 MB, load, swap).
        full = []
        for i in range(full_trials):
            src = make_embedding_model(os.path.join(build, f"full-{i}", "model.onnx"), rows, dim, DENSE, seed=10 + i)
            t0 = time.perf_counter()
            publish(src, base, 2 + i)
            while predict(client, server.url, [0]).headers.get("x-model-version") != str(2 + i):
                time.sleep(0.005)
            full.append((time.perf_counter() - t0) * 1000)
            log(f"  full version {2 + i}: {full[-1]:.0f} ms")
    return {"trials": trials, "delta_total_ms": totals, "delta_post_ms": posts, "delta_applied_ms": applied,
            "full_version_ms": full}


# -- 2. concurrency 16 during 10 deltas/s ------------------------------------------------------
def under_deltas(server: ServerProcess, rows: int, dim: int, seconds: float, steady_seconds: float, log) -> dict:
    rng = np.random.default_rng(99)
    bodies = [delta_bytes(sample_rows(rng, rows, 1000), rng.standard_normal((1000, dim)).astype(np.float32))
              for _ in range(int(seconds * 10) + 10)]

    def run_phase(duration: float, deltas_per_s: float) -> tuple[list[float], int, int, int]:
        lat: list[float] = []
        failed = [0]
        applied = [0]
        lock = threading.Lock()
        stop = time.monotonic() + duration

        def client_loop(seed: int) -> None:
            rng = np.random.default_rng(seed)
            mine: list[float] = []
            with httpx.Client(timeout=30) as c:
                while time.monotonic() < stop:
                    items = rng.integers(0, rows, 8).tolist()
                    t0 = time.perf_counter()
                    try:
                        ok = predict(c, server.url, items).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    mine.append(time.perf_counter() - t0)
                    if not ok:
                        with lock:
                            failed[0] += 1
            with lock:
                lat.extend(mine)

        def writer() -> None:
            with httpx.Client(timeout=30) as c:
                nxt = time.monotonic()
                for body in bodies:  # built before the phase: the load generator's GIL is the clients'
                    if time.monotonic() >= stop:
                        break
                    r = c.post(f"{server.url}/v1/models/m/versions/1:update_parameters", content=body,
                               headers={**AUTH, "Content-Type": "application/x-safetensors"})
                    if r.status_code == 200:
                        applied[0] += 1
                    nxt += 1.0 / deltas_per_s
                    time.sleep(max(0.0, nxt - time.monotonic()))

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(16)]
        if deltas_per_s:
            threads.append(threading.Thread(target=writer))
        for t in threads:
            t.start()
        for t in threads:
            t.join(duration + 60)
        return lat, failed[0], applied[0], len(lat)

    steady, f0, _, n0 = run_phase(steady_seconds, 0)
    log(f"  steady: {n0} requests, p99 {pct(steady, 99) * 1e3:.2f} ms")
    during, f1, applied, n1 = run_phase(seconds, 10)
    log(f"  during deltas: {n1} requests, {applied} deltas, p99 {pct(during, 99) * 1e3:.2f} ms, failed {f1}")
    return {"steady": {"requests": n0, "failed": f0, "p50_ms": pct(steady, 50) * 1e3, "p99_ms": pct(steady, 99) * 1e3},
            "during": {"requests": n1, "failed": f1, "deltas": applied, "seconds": seconds,
                       "p50_ms": pct(during, 50) * 1e3, "p99_ms": pct(during, 99) * 1e3}}


# -- 3. memory per delta ---------------------------------------------------------------------
def memory(server: ServerProcess, rows: int, dim: int, n: int, log) -> dict:
    rng = np.random.default_rng(7)
    pid = server.proc.pid
    growth = []
    nbytes = 10_000 * dim * 4 + 10_000 * 8
    with httpx.Client(timeout=120) as client:
        for i in range(n):
            before = rss(pid)
            touched = sample_rows(rng, rows, 10_000)
            r = client.post(f"{server.url}/v1/models/m/versions/1:update_parameters",
                            content=delta_bytes(touched, rng.standard_normal((10_000, dim)).astype(np.float32)),
                            headers={**AUTH, "Content-Type": "application/x-safetensors"})
            assert r.status_code == 200, r.text
            predict(client, server.url, [int(touched[0])])
            time.sleep(0.05)  # let the fold thread write the overlay into the table
            growth.append(rss(pid) - before)
    kept = 16
    first, later = growth[:kept], growth[kept:]
    log(f"  RSS growth per delta: first {len(first)}: mean {statistics.mean(first) / 2**20:.2f} MiB; "
        f"after: {statistics.mean(later) / 2**20 if later else float('nan'):.2f} MiB; delta {nbytes / 2**20:.2f} MiB")
    return {"delta_bytes": nbytes, "growth_bytes": growth, "kept_revisions": kept,
            "first_mean_ratio": statistics.mean(first) / nbytes,
            "after_mean_ratio": statistics.mean(later) / nbytes if later else None,
            "table_bytes": rows * dim * 4}


# -- 4. learner --publish deltas freshness -----------------------------------------------------
def learner_freshness(workdir: str, seconds: float, log) -> dict | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        log("  torch not installed: skipped (pip install torch==2.13.0)")
        return None
    import subprocess

    from hotserve.learning.ctr import CTRWorld
    from hotserve.learning.torch_trainer import TorchTrainer

    base = os.path.join(workdir, "ctr")
    t = TorchTrainer(module="hotserve.learning.ctr:make")
    t.load(None)
    t.export(os.path.join(workdir, "ctr-v1"))
    publish(os.path.join(workdir, "ctr-v1"), base, 1)
    learning_dir = os.path.join(workdir, "learn")
    server = ServerProcess(["--model_name", "m", "--model_base_path", base, "--learning_dir", learning_dir,
                            "--file_system_poll_wait_seconds", "0.2", "--tensorflow_intra_op_parallelism", "1"],
                           os.path.join(workdir, "ctr-server.log"))
    server.start()
    server.wait_ready()
    learner = subprocess.Popen(
        [sys.executable, "-m", "hotserve", "learn", "--model_name", "m", "--model_base_path", base,
         "--learning_dir", learning_dir, "--trainer", "hotserve.learning.torch_trainer:TorchTrainer",
         "--trainer_option", "module=hotserve.learning.ctr:make", "--every_examples", "32", "--every_seconds", "0.1",
         "--poll_seconds", "0.02", "--min_holdout", "20", "--max_metric_drop", "0.05", "--publish", "deltas",
         "--full_every", "0", "--duration", str(seconds + 20)],
        stdout=open(os.path.join(workdir, "learner.log"), "wb"), stderr=subprocess.STDOUT)
    world = CTRWorld(seed=3)
    try:
        with httpx.Client(timeout=30) as c:
            stop = time.monotonic() + seconds
            while time.monotonic() < stop:
                inputs, prob = world.impressions(40)
                clicks = world.clicks(prob)
                ex = [{"inputs": {"user": int(inputs["user"][i]), "ad": int(inputs["ad"][i]),
                                  "dense": inputs["dense"][i].tolist()}, "label": [float(clicks[i])]} for i in range(40)]
                assert c.post(server.url + "/v1/models/m:feedback", json={"examples": ex}).status_code == 200
                time.sleep(0.25)
            time.sleep(2.0)
            status = c.get(server.url + "/v1/models/m/learning").json()
            events = c.get(server.url + "/v1/events", params={"kind": "learned_version_served", "after": 0}).json()["events"]
    finally:
        learner.terminate()
        learner.wait(30)
        server.stop()
    fresh = [e["freshness_seconds"] * 1000 for e in events]
    log(f"  learner deltas served: {len(fresh)}, freshness p50 {pct(fresh, 50):.0f} ms, p99 {pct(fresh, 99):.0f} ms")
    return {"deltas_served": len(fresh), "freshness_ms": fresh, "status_freshness": status.get("freshness")}


def table(res: dict, quick: bool) -> str:
    f, u, m, lf = res["freshness"], res["under_deltas"], res["memory"], res.get("learner")
    lines = [f"# Live parameter updates ({'smoke run, --quick' if quick else 'full run'}; "
             f"{res['rows']:,} x {res['dim']} float32 table, {res['rows'] * res['dim'] * 4 / 2**20:.0f} MiB; "
             f"busy 2-core machine, load average {res['load']:.1f})", "",
             "| what | p50 | p99 | vs peer |", "|---|---:|---:|---:|"]
    full = statistics.median(f["full_version_ms"]) if f["full_version_ms"] else float("nan")
    d50 = pct(f["delta_total_ms"], 50)
    lines.append(f"| 10,000-row delta: POST -> first prediction served with it (target p50 <= 100, p99 <= 250 ms) | "
                 f"{d50:.1f} ms | {pct(f['delta_total_ms'], 99):.1f} ms | {d50 / full:.3f}x |")
    lines.append(f"| ... of which the server's applied_ms (parse, validate, build, write durably, switch) | "
                 f"{pct(f['delta_applied_ms'], 50):.1f} ms | {pct(f['delta_applied_ms'], 99):.1f} ms | |")
    lines.append(f"| peer: the same change as a full new version (publish {res['rows'] * res['dim'] * 4 / 2**20:.0f} MiB, load, swap) | {full:.0f} ms | "
                 f"{max(f['full_version_ms'] or [float('nan')]):.0f} ms | 1.00x |")
    lines += ["", "| concurrency 16, batch 8 | requests | failed | p50 | p99 | p99 vs steady |", "|---|---:|---:|---:|---:|---:|"]
    s, d = u["steady"], u["during"]
    lines.append(f"| steady (no deltas) | {s['requests']} | {s['failed']} | {s['p50_ms']:.2f} ms | {s['p99_ms']:.2f} ms | 1.00x |")
    lines.append(f"| during {d['deltas']} deltas in {d['seconds']:.0f} s (1,000 rows each; target 0 failed, <= 1.2x) | "
                 f"{d['requests']} | {d['failed']} | {d['p50_ms']:.2f} ms | {d['p99_ms']:.2f} ms | "
                 f"{d['p99_ms'] / s['p99_ms']:.2f}x |")
    lines += ["", "| memory | per delta | vs delta bytes |", "|---|---:|---:|"]
    lines.append(f"| RSS growth, first {m['kept_revisions']} deltas (undo kept for rollback; target <= 2x) | "
                 f"{m['first_mean_ratio'] * m['delta_bytes'] / 2**20:.2f} MiB | {m['first_mean_ratio']:.2f}x |")
    if m["after_mean_ratio"] is not None:
        lines.append(f"| RSS growth once the kept history is full | {m['after_mean_ratio'] * m['delta_bytes'] / 2**20:.2f} MiB | "
                     f"{m['after_mean_ratio']:.2f}x |")
    lines.append(f"| peer: a second copy of the table (a reload) | {m['table_bytes'] / 2**20:.0f} MiB | "
                 f"{m['table_bytes'] / m['delta_bytes']:.0f}x |")
    if lf:
        lines += ["", "| learner --publish deltas (CTR example) | served | p50 | p99 |", "|---|---:|---:|---:|",
                  f"| label arrival -> revision serving a delta trained on it (target p50 <= 500 ms, p99 <= 1 s) | "
                  f"{lf['deltas_served']} | {pct(lf['freshness_ms'], 50):.0f} ms | {pct(lf['freshness_ms'], 99):.0f} ms |"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 200,000-row table, short phases")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--skip_learner", action="store_true")
    args = ap.parse_args()
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    dim = 64
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="hotserve-bench-params-") as workdir:
        base, build = os.path.join(workdir, "models", "m"), os.path.join(workdir, "build")
        log(f"building the CTR model ({rows:,} x {dim} table)...")
        publish(make_embedding_model(os.path.join(build, "v1", "model.onnx"), rows, dim, DENSE), base, 1)
        server = start(base, workdir, "server", "--num_versions", "1")
        res = {"rows": rows, "dim": dim, "quick": args.quick, "load": os.getloadavg()[0]}
        try:
            log("1. freshness of a 10,000-row delta")
            res["freshness"] = freshness(server, base, build, rows, dim, 8 if args.quick else 40, 1 if args.quick else 3, log)
        finally:
            server.stop()
        # Phases 2 and 3 on a fresh server holding version 1 only.
        base2 = os.path.join(workdir, "models", "m2")
        publish(os.path.join(build, "v1"), base2, 1)
        server = start(base2, workdir, "server2")
        try:
            log("2. concurrency 16 during 10 deltas/s")
            res["under_deltas"] = under_deltas(server, rows, dim, 8 if args.quick else 30, 5 if args.quick else 15, log)
            log("3. memory per delta")
            res["memory"] = memory(server, rows, dim, 20 if args.quick else 40, log)
        finally:
            server.stop()
        if not args.skip_learner:
            log("4. learner --publish deltas")
            res["learner"] = learner_freshness(workdir, 10 if args.quick else 40, log)
    text = table(res, args.quick)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "parameters.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(RESULTS, "parameters.md"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
