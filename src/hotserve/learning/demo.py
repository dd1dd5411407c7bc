"""`hotserve demo --learning`: continuous learning on a click-through-rate model with drift.

One server serves the same first version under two names: `ctr` (prediction logging on, a
learner training on its feedback) and `ctr_off` (no learning). A client streams impressions to
both, clicks are drawn from the generated world and sent back as feedback after a delay, and
midway the world drifts (ad popularity flips, new ads appear). At the end: rolling AUC and log
loss of both over time, the freshness of every learned version (feedback 200 -> first
prediction served by a version trained on it), and a PNG plot when matplotlib is installed.
Needs torch (`pip install torch==2.13.0`, the CPU wheel).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np
import orjson

from hotserve.launcher import ServerProcess
from hotserve.learning.ctr import CTRWorld
from hotserve.learning.store import watermark_key
from hotserve.learning.trainer import Batch, auc, binary_metrics
from hotserve.repository import manifest
from hotserve.repository.publish import publish

ON, OFF = "ctr", "ctr_off"
TRAINER = "hotserve.learning.torch_trainer:TorchTrainer"
MODULE = "hotserve.learning.ctr:make"
# 100 s after the drift (at a third): recovery took 60-100 s at this traffic (docs/learning.md)
DEFAULT_SECONDS = 150.0


@dataclass
class Timeline:
    impressions: list = field(default_factory=list)  # (t, p_on, p_off, click, version_on)
    feedback_calls: list = field(default_factory=list)  # (t_ack, watermark, n)
    first_served: dict = field(default_factory=dict)  # version -> first time a response named it
    failures: int = 0
    errors: list = field(default_factory=list)
    requests: int = 0


class _Http:
    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, path: str, doc: dict) -> tuple[int, dict, dict]:
        body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            self.conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            raise
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, orjson.loads(data) if data else {}


def train_first_version(world: CTRWorld, out_dir: str, n: int = 40_000, epochs: int = 3) -> dict:
    from hotserve.learning.torch_trainer import TorchTrainer

    trainer = TorchTrainer(module=MODULE, lr=0.02)
    trainer.load(None)
    x, p = world.impressions(n)
    batch = Batch(x, {"p": world.clicks(p).reshape(-1, 1)}, np.ones(n, np.float32))
    for _ in range(epochs):
        trainer.update(batch)
    trainer.export(out_dir)
    hx, hp = world.impressions(5000)
    return trainer.evaluate(Batch(hx, {"p": world.clicks(hp).reshape(-1, 1)}, np.ones(5000, np.float32)))


def _instances(x: dict) -> list[dict]:
    return [{"user": int(u), "ad": int(a), "dense": d.tolist()} for u, a, d in zip(x["user"], x["ad"], x["dense"])]


def stream(url: str, world: CTRWorld, duration: float, drift_at: float, rate: float, rows: int,
           label_delay: float) -> Timeline:
    """Impressions to both models at `rate` requests/s; clicks back to `ctr` as feedback after
    `label_delay` seconds (a separate thread, as a click log would)."""
    tl = Timeline()
    due: deque = deque()  # (due time, request id, x, probs, p_on, p_off, version, t)
    lock = threading.Lock()
    stop = threading.Event()
    client = _Http(url)

    def feedback_loop() -> None:
        fb = _Http(url)
        while not (stop.is_set() and not due):
            now = time.time()
            items, batch = [], []
            with lock:
                while due and due[0][0] <= now:
                    batch.append(due.popleft())
            for _, rid, x, probs, p_on, p_off, version, t in batch:
                clicks = world.clicks(probs)
                for i, c in enumerate(clicks):
                    items.append({"request_id": rid, "row": i, "label": [float(c)]})
                    tl.impressions.append((t, float(p_on[i]), float(p_off[i]), float(c), version))
            if items:
                try:
                    status, _, doc = fb.post(f"/v1/models/{ON}:feedback", {"feedback": items})
                except (OSError, http.client.HTTPException) as exc:
                    tl.failures += 1
                    tl.errors.append(f"feedback: {exc!r}")
                    continue
                if status != 200:
                    tl.failures += 1
                    tl.errors.append(f"feedback {status}: {doc}")
                else:
                    tl.feedback_calls.append((time.time(), doc.get("watermark"), len(items)))
            time.sleep(0.02)

    fb_thread = threading.Thread(target=feedback_loop, daemon=True)
    fb_thread.start()
    t_start = time.time()
    period = 1.0 / rate
    next_tick = time.monotonic()
    drifted = False
    while time.time() - t_start < duration:
        if not drifted and time.time() - t_start >= drift_at:
            world.drift()
            drifted = True
        x, probs = world.impressions(rows)
        doc = {"instances": _instances(x)}
        try:
            s_on, h_on, d_on = client.post(f"/v1/models/{ON}:predict", doc)
            s_off, _, d_off = client.post(f"/v1/models/{OFF}:predict", doc)
        except (OSError, http.client.HTTPException) as exc:
            tl.failures += 1
            tl.errors.append(repr(exc))
            continue
        tl.requests += 2
        if s_on != 200 or s_off != 200:
            tl.failures += 1
            tl.errors.append(f"predict {s_on}/{s_off}: {d_on if s_on != 200 else d_off}")
            continue
        now = time.time()
        version = int(h_on["x-model-version"])
        tl.first_served.setdefault(version, now)
        p_on = np.asarray(d_on["predictions"], np.float64).reshape(-1)
        p_off = np.asarray(d_off["predictions"], np.float64).reshape(-1)
        with lock:
            due.append((now + label_delay, h_on["x-request-id"], x, probs, p_on, p_off, version, now - t_start))
        next_tick += period
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.monotonic()
    stop.set()
    fb_thread.join(label_delay + 30)
    return tl


def freshness(tl: Timeline, base: str) -> tuple[list[dict], list[float], list[float]]:
    """Per learned version: which feedback calls it is the first to include, and how long from
    each call's 200 to the first prediction that version served. Also the same figures for the
    calls after the first learned version served (steady state: the learner's start-up, its
    first --min_holdout examples, is behind it)."""
    versions = []
    for name in sorted(os.listdir(base), key=lambda n: int(n) if n.isdigit() else -1):
        if not name.isdigit():
            continue
        try:
            lineage = manifest.read(os.path.join(base, name)).get("lineage") or {}
        except Exception:
            continue
        if lineage.get("source") == "learner":
            versions.append((int(name), lineage))
    rows, all_values, steady = [], [], []
    calls = sorted(tl.feedback_calls, key=lambda c: watermark_key(c[1]))
    first_learned = min((tl.first_served[v] for v, _ in versions if v in tl.first_served), default=None)
    i = 0
    for version, lineage in versions:
        covered = []
        wm = watermark_key(lineage.get("watermark"))
        while i < len(calls) and watermark_key(calls[i][1]) <= wm:
            covered.append(calls[i])
            i += 1
        served = tl.first_served.get(version)
        values = [served - c[0] for c in covered] if served is not None else []
        all_values += values
        if served is not None and first_learned is not None:
            steady += [served - c[0] for c in covered if c[0] >= first_learned]
        m = lineage.get("metrics", {})
        rows.append({"version": version, "examples": lineage.get("examples_used"), "calls": len(covered),
                     "served": served is not None,
                     "min": min(values) if values else None, "p50": statistics.median(values) if values else None,
                     "max": max(values) if values else None,
                     "candidate": m.get("candidate", {}).get(m.get("gate_metric", "")),
                     "parent": m.get("parent", {}).get(m.get("gate_metric", ""))})
    return rows, all_values, steady


def pooled(tl: Timeline, start: float, end: float) -> dict | None:
    """Both models' AUC and log loss over every labelled impression in [start, end), how many,
    and the newest version that served them; None for fewer than 20. A 5 s window (3,200
    impressions here) moves by ~0.01 of AUC on its own, so the recovery figure pools 15 s."""
    rows = [r for r in tl.impressions if start <= r[0] < end]
    if len(rows) < 20:
        return None
    arr = np.asarray([r[:4] for r in rows])
    on, off = binary_metrics(arr[:, 1], arr[:, 3]), binary_metrics(arr[:, 2], arr[:, 3])
    return {"n": len(rows), "auc_on": on["auc"], "auc_off": off["auc"], "ll_on": on["log_loss"],
            "ll_off": off["log_loss"], "version": max(r[4] for r in rows)}


def windows(tl: Timeline, window: float) -> list[dict]:
    """pooled() over consecutive windows from the start, those with enough impressions."""
    end = max((r[0] for r in tl.impressions), default=0.0)
    starts = np.arange(0.0, end, window) if tl.impressions else []
    return [{"t": float(t), "span": window, **w} for t in starts if (w := pooled(tl, t, t + window)) is not None]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(values, q * 100))


def plot(rows: list[dict], fresh_rows: list[dict], drift_at: float, path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t = [r["t"] + r["span"] / 2 for r in rows]  # each window's midpoint
    fig, axes = plt.subplots(3, 1, figsize=(9, 10))
    axes[0].plot(t, [r["auc_on"] for r in rows], label="learning on")
    axes[0].plot(t, [r["auc_off"] for r in rows], label="learning off")
    axes[0].set_ylabel("rolling AUC")
    axes[1].plot(t, [r["ll_on"] for r in rows], label="learning on")
    axes[1].plot(t, [r["ll_off"] for r in rows], label="learning off")
    axes[1].set_ylabel("rolling log loss")
    for ax in axes[:2]:
        ax.axvline(drift_at, color="grey", linestyle="--", label="drift")
        ax.set_xlabel("seconds (impression time)")
        ax.legend()
    fr = [r for r in fresh_rows if r["p50"] is not None]
    axes[2].bar([str(r["version"]) for r in fr], [r["p50"] for r in fr], label="median")
    axes[2].plot([str(r["version"]) for r in fr], [r["max"] for r in fr], "k.", label="max")
    axes[2].set_ylabel("freshness (s): feedback 200 -> served")
    axes[2].set_xlabel("learned version")
    step = max(1, len(fr) // 25)  # a readable number of version labels
    axes[2].set_xticks(range(0, len(fr), step), [str(r["version"]) for r in fr][::step])
    axes[2].tick_params(axis="x", labelsize=7)
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(duration: float = DEFAULT_SECONDS, drift_at: float | None = None, rate: float = 40.0, rows: int = 16,
        label_delay: float = 1.0, workdir: str | None = None, png: str | None = "learning_demo.png",
        window: float = 5.0, seed: int = 0, learner_args: list[str] | None = None, quiet: bool = False) -> dict:
    drift_at = duration / 3 if drift_at is None else drift_at
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="hotserve-learning-demo-")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    world = CTRWorld(seed)
    say("training the first version on 40,000 generated impressions (pre-drift world)...")
    first = train_first_version(world, os.path.join(workdir, "build", "1"))
    say(f"  first version: log loss {first['log_loss']:.4f}, AUC {first['auc']:.4f}")
    for name in (ON, OFF):
        publish(os.path.join(workdir, "build", "1"), os.path.join(workdir, "models", name), 1)
    config = os.path.join(workdir, "models.yaml")
    with open(config, "w") as f:
        f.write(f"""model_config_list:
  - name: {ON}
    base_path: {workdir}/models/{ON}
    logging_config: {{sampling_config: {{sampling_rate: 1.0}}}}
  - name: {OFF}
    base_path: {workdir}/models/{OFF}
""")
    learning_dir = os.path.join(workdir, "learning")
    server = ServerProcess(["--model_config_file", config, "--learning_dir", learning_dir,
                            "--file_system_poll_wait_seconds", "0.5"], os.path.join(workdir, "server.log"))
    learner_log = open(os.path.join(workdir, "learner.log"), "wb")
    learner = None
    try:
        server.start()
        server.wait_ready(60)
        cmd = [sys.executable, "-m", "hotserve", "learn", "--model_name", ON, "--model_base_path",
               os.path.join(workdir, "models", ON), "--learning_dir", learning_dir, "--trainer", TRAINER,
               "--trainer_option", f"module={MODULE}", "--trainer_option", "lr=0.02",
               "--every_examples", "400", "--every_seconds", "0.5", "--max_metric_drop", "0.01",
               "--holdout_every", "10", "--holdout_size", "400", "--min_holdout", "100",
               "--keep_versions", "0",  # the report reads every learned version's lineage
               *(learner_args or [])]
        learner = subprocess.Popen(cmd, stdout=learner_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while b"running" not in open(learner_log.name, "rb").read():
            if learner.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the learner did not start:\n{open(learner_log.name).read()[-3000:]}")
            time.sleep(0.05)
        say(f"streaming {rate:g} requests/s x {rows} impressions to {ON} (learning) and {OFF} for {duration:g}s; "
            f"clicks come back {label_delay:g}s later; drift at {drift_at:g}s")
        tl = stream(server.url, world, duration, drift_at, rate, rows, label_delay)
        learner.send_signal(signal.SIGTERM)
        learner.wait(30)
        status = orjson.loads(server.get(f"/v1/models/{ON}/learning")[1])
    finally:
        if learner is not None and learner.poll() is None:
            learner.kill()
        learner_log.close()
        server.stop()
    rows_w = windows(tl, window)
    fresh_rows, fresh, steady = freshness(tl, os.path.join(workdir, "models", ON))
    # Before the drift and at the end, each pooled over the same span (three windows, or what the
    # run has of them): the learning-on model's AUC then against its AUC at the end.
    span = min(3 * window, drift_at, max(0.0, duration - drift_at))
    last = max((r[0] for r in tl.impressions), default=0.0)
    pre = pooled(tl, drift_at - span, drift_at) if span > 0 else None
    post = pooled(tl, last - span, last + 1e-9) if span > 0 else None
    summary = {
        "requests": tl.requests, "failures": tl.failures, "errors": tl.errors[:5],
        "feedback_calls": len(tl.feedback_calls), "impressions_labelled": len(tl.impressions),
        "versions_published": len(fresh_rows),
        "freshness_p50": _pct(fresh, 0.5), "freshness_p99": _pct(fresh, 0.99), "freshness_n": len(fresh),
        "steady_p50": _pct(steady, 0.5), "steady_p99": _pct(steady, 0.99), "steady_n": len(steady),
        "auc_span": span, "auc_on_pre": pre["auc_on"] if pre else None, "auc_on_end": post["auc_on"] if post else None,
        "auc_off_end": post["auc_off"] if post else None, "windows": rows_w, "versions": fresh_rows,
        "status": status, "workdir": workdir,
    }
    say("")
    say(f"{'t (s)':>6} {'rows':>5} {'AUC on':>7} {'AUC off':>8} {'logloss on':>11} {'logloss off':>12} {'version':>8}")
    for r in rows_w:
        mark = "  <- drift" if r["t"] <= drift_at < r["t"] + window else ""
        say(f"{r['t']:>6.0f} {r['n']:>5} {r['auc_on']:>7.4f} {r['auc_off']:>8.4f} {r['ll_on']:>11.4f} "
            f"{r['ll_off']:>12.4f} {r['version']:>8}{mark}")
    say("")
    say(f"{'version':>8} {'examples':>9} {'calls':>6} {'fresh min':>10} {'p50':>7} {'max':>7}   gate metric cand/parent")
    for r in fresh_rows:
        f = (lambda v: f"{v:.3f}" if v is not None else "-")
        gate = f"{r['candidate']:.4f}/{r['parent']:.4f}" if r["candidate"] is not None and r["parent"] is not None else "-"
        say(f"{r['version']:>8} {r['examples'] or 0:>9} {r['calls']:>6} {f(r['min']):>10} {f(r['p50']):>7} "
            f"{f(r['max']):>7}   {gate}")
    say("")
    fp50, fp99 = summary["freshness_p50"], summary["freshness_p99"]
    say(f"requests {tl.requests}, failed {tl.failures}; feedback calls {len(tl.feedback_calls)}; "
        f"learned versions {len(fresh_rows)}")
    if fp50 is not None:
        say(f"freshness (feedback 200 -> first prediction by a version trained on it) over {len(fresh)} calls: "
            f"p50 {fp50:.3f}s, p99 {fp99:.3f}s (target p50 <= 2s, p99 <= 5s)")
    if summary["steady_p50"] is not None:
        say(f"  after the first learned version served ({len(steady)} calls): p50 {summary['steady_p50']:.3f}s, "
            f"p99 {summary['steady_p99']:.3f}s")
    if summary["auc_on_pre"] is not None and summary["auc_on_end"] is not None:
        gap = summary["auc_on_pre"] - summary["auc_on_end"]
        say(f"AUC over the {span:g} s before the drift {summary['auc_on_pre']:.4f}; over the last {span:g} s: "
            f"learning on {summary['auc_on_end']:.4f} "
            f"({'within' if gap <= 0.01 else 'NOT within'} 0.01), learning off {summary['auc_off_end']:.4f}")
    if png:
        drawn = plot(rows_w, fresh_rows, drift_at, png)
        say(f"plot: {drawn}" if drawn else "plot: skipped (pip install matplotlib, or the 'learning' extra)")
        summary["png"] = drawn
    if own and not quiet:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary
