#!/usr/bin/env python3
"""Fleet bench: three hotserve replicas behind nginx, under load, while versions roll out.

    python bench/fleet.py                  # 20 two-phase rollouts, a SIGTERM, a kill -9, a rollback,
                                           # then the same publishes on an uncoordinated fleet (~2-3 min)
    python bench/fleet.py --rollouts 3     # smoke run (~1 min)

Two fleets, the same machine, the same load, one after the other:

  two-phase     hotserve --fleet: replicas register in a local ZooKeeper; each new version is
                published into every replica's own copy of the repository (one after the
                other, as a sync job fills each host), every replica prepares it (loaded,
                gated, warm, not routed), then `Rollout.run` (what `hotserve rollout` runs)
                flips the fleet with one znode write. Then a version whose copy is corrupt on
                one replica (its rollout aborts), a SIGTERM (--drain_seconds) and a kill -9 of
                a replica (each restarted), and one `--rollback`.
  uncoordinated the peer: the same replicas without --fleet, each swapping on its own as soon as
                it sees the version (inotify), as TF Serving replicas each poll and swap; the
                same publishes and the same corrupt copy.

The load runs through nginx (deploy's config, cluster/nginx.conf.template) for the whole phase:
wrk (-t N -c N, bench/wrk/swap.lua: every request's start, end, status, X-Model-Version and
the version the model's own output shows; the model is y = x + version) plus Python gRPC
clients (KServe V2 ModelInfer) doing the same checks.

Per phase: skew = from the flip's znode write (two-phase) or the start of the publish
(uncoordinated) to the last replica serving the new version, each replica's swap time taken
from its own event bus; spread = first to last replica; failed requests; answers from the old
version after the rollout reported done (output checked); flaps = a client that saw the new
version then the old one again. Writes bench/results/fleet.{json,md}.
"""

from __future__ import annotations

import argparse
import glob
import json
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
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

from benchlib import procs, report, session, tools  # noqa: E402
from benchlib.loadgen import percentile  # noqa: E402

MODEL = "m"
X = [0.0, 1.0, 2.0, 3.0]  # y = x + version: the first output is the version


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/fleet.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rollouts", type=int, default=20, help="rollouts (and publishes for the peer), default 20")
    p.add_argument("--replicas", type=int, default=3, help="replicas behind nginx (default 3)")
    p.add_argument("--concurrency", type=int, default=6, help="wrk connections through nginx (default 6)")
    p.add_argument("--grpc-clients", type=int, default=1, help="Python gRPC client threads through nginx (default 1)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds of load between two rollouts (default 0.5)")
    p.add_argument("--drain-seconds", type=float, default=1.0, help="the replicas' --drain_seconds (default 1)")
    p.add_argument("--skip-peer", action="store_true", help="leave out the uncoordinated fleet")
    p.add_argument("--client-cpus", default="1", help="CPU list wrk is pinned to (default 1)")
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk; fail instead")
    p.add_argument("--results-dir", default=os.path.join(BENCH_DIR, "results"), help="where fleet.json/.md go")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory (logs, per-request rows)")
    o = p.parse_args(argv)
    if o.rollouts < 1 or o.replicas < 2:
        p.error("--rollouts >= 1 and --replicas >= 2")
    return o


# -- load -----------------------------------------------------------------------------------------
class Wrk:
    """wrk through nginx for as long as the phase lasts (stopped with SIGINT, which makes it report)."""

    def __init__(self, url: str, concurrency: int, workdir: str, client_cpus: str) -> None:
        self.prefix = os.path.join(workdir, "wrk-")
        body = os.path.join(workdir, "body.json")
        with open(body, "w") as f:
            json.dump({"instances": [X]}, f)
        env = dict(os.environ, BENCH_BODY_FILE=body, BENCH_CONTENT_TYPE="application/json", BENCH_LOG_PREFIX=self.prefix)
        cmd = ["taskset", "-c", client_cpus, "wrk", "-t", str(concurrency), "-c", str(concurrency), "-d", "3600s",
               "--timeout", "10s", "-s", os.path.join(BENCH_DIR, "wrk", "swap.lua"), f"{url}/v1/models/{MODEL}:predict"]
        self.out_path = os.path.join(workdir, "wrk.out")
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.owned = procs.Owned(self.proc, "wrk", own_group=False)

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        self.owned.stop()
        with open(self.out_path) as f:
            out = f.read()
        m = re.search(r"^BENCH_JSON (\{.*\})$", out, re.M)
        if not m:
            raise RuntimeError(f"wrk printed no report:\n{out[-2000:]}")
        return json.loads(m.group(1))

    def rows(self) -> list[list[tuple]]:
        """Per connection: (start, end, status, header version, output version) in order."""
        out = []
        for path in sorted(glob.glob(self.prefix + "*.tsv")):
            rows = []
            with open(path) as f:
                for line in f:
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) != 5:
                        continue
                    hv = int(parts[3]) if parts[3].isdigit() else None
                    try:
                        ov = float(parts[4])
                    except ValueError:
                        ov = None
                    rows.append((float(parts[0]), float(parts[1]), int(parts[2]), hv, ov))
            out.append(rows)
        return out


class GrpcClients:
    """KServe V2 ModelInfer through nginx in Python threads; the same rows as wrk's."""

    def __init__(self, target: str, n: int) -> None:
        self.target = target
        self.stop_event = threading.Event()
        self.rows: list[list[tuple]] = [[] for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        import grpc
        import numpy as np

        from hotserve.protos.inference import grpc_service_pb2 as pb

        channel = grpc.insecure_channel(self.target)
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        req = pb.ModelInferRequest(model_name=MODEL)
        t = req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        t.contents.fp32_contents.extend(X)
        while not self.stop_event.is_set():
            start = time.monotonic()
            try:
                resp = infer(req, timeout=10)
                y = float(np.frombuffer(resp.raw_output_contents[0], np.float32)[0]) if resp.raw_output_contents \
                    else float(resp.outputs[0].contents.fp32_contents[0])
                hv = int(resp.model_version) if resp.model_version.isdigit() else None
                self.rows[i].append((start, time.monotonic(), 200, hv, y))
            except grpc.RpcError as exc:
                self.rows[i].append((start, time.monotonic(), 500, None, None))
                if not self.stop_event.is_set():
                    print(f"    gRPC failure: {exc.code().name}: {exc.details()}", flush=True)
        channel.close()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(15)


# -- a fleet of replicas ------------------------------------------------------------------------------
class Replicas:
    def __init__(self, workdir: str, bases: list[str], flags: list[str]) -> None:
        from hotserve.cluster.local import free_port

        n = len(bases)
        self.workdir, self.bases, self.flags = workdir, bases, flags
        self.ports = [(free_port(), free_port()) for _ in range(n)]  # fixed: a restarted replica keeps its place in nginx
        self.servers: list = [None] * n
        self.owned: list = [None] * n

    def start(self, i: int) -> None:
        from hotserve.launcher import ServerProcess

        rest, grpc_port = self.ports[i]
        args = ["--model_name", MODEL, "--model_base_path", self.bases[i], "--port", str(grpc_port), *self.flags]
        if "--fleet" in self.flags:
            args += ["--fleet_replica_id", f"replica-{i}"]
        sp = ServerProcess(args, os.path.join(self.workdir, f"replica{i}-{time.monotonic_ns()}.log"), port=rest)
        sp.start(timeout=60)
        self.owned[i] = procs.Owned(sp.proc, f"replica-{i}", own_group=False, stop_fn=sp.stop)
        sp.wait_ready(timeout=60)
        self.servers[i] = sp

    def start_all(self) -> None:
        threads = [threading.Thread(target=self.start, args=(i,)) for i in range(len(self.ports))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(s is None for s in self.servers):
            raise RuntimeError("a replica failed to start (see its log in the workdir)")

    def stop(self, i: int, sig: int) -> int | None:
        sp = self.servers[i]
        sp.proc.send_signal(sig)
        code = sp.proc.wait(60)
        self.owned[i].stop()
        return code

    def swaps(self, i: int) -> list[tuple[float, int]]:
        """(unix time, default version) of every swap the replica's event bus still holds."""
        with urllib.request.urlopen(self.servers[i].url + "/v1/events?kind=swap", timeout=10) as r:
            doc = json.loads(r.read())
        return [(e["time"], e["default"]) for e in doc["events"] if e["default"] is not None]

    def serving(self, i: int) -> int:
        req = urllib.request.Request(self.servers[i].url + f"/v1/models/{MODEL}:predict",
                                     data=json.dumps({"instances": [X]}).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(round(json.loads(r.read())["predictions"][0][0]))


def _publish(build: str, bases: list[str], version: int, corrupt_on: int | None = None) -> None:
    """The version into every replica's own copy of the repository, one after the other (as a sync
    job fills each host); on `corrupt_on` a byte of the model is flipped after the publish."""
    from hotserve.examples import make_affine
    from hotserve.repository.publish import publish

    src = make_affine(os.path.join(build, str(version), "model.onnx"), float(version))
    for i, base in enumerate(bases):
        _, path = publish(src, base, version)
        if i == corrupt_on:
            f = os.path.join(path, "model.onnx")
            data = bytearray(open(f, "rb").read())
            data[-1] ^= 0xFF
            with open(f, "wb") as out:
                out.write(bytes(data))


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


# -- the phases ------------------------------------------------------------------------------------------
def run_phase(kind: str, o: argparse.Namespace, workdir: str, zk_url: str | None, log) -> dict:
    from hotserve.cluster.local import LocalNginx

    work = os.path.join(workdir, kind)
    bases, build = [os.path.join(work, f"repo{i}", MODEL) for i in range(o.replicas)], os.path.join(work, "build")
    os.makedirs(build, exist_ok=True)
    _publish(build, bases, 1)
    flags = ["--drain_seconds", f"{o.drain_seconds:g}", "--file_system_poll_wait_seconds", "1"]
    if zk_url:
        flags = ["--fleet", zk_url, *flags]
    fleet = Replicas(work, bases, flags)
    log(f"  starting {o.replicas} replicas" + (f" in fleet {zk_url}" if zk_url else " (no --fleet)"))
    fleet.start_all()
    ngx = LocalNginx(os.path.join(work, "nginx"), [f"127.0.0.1:{r}" for r, _ in fleet.ports],
                     [f"127.0.0.1:{g}" for _, g in fleet.ports])
    ngx.start()
    procs.Owned(ngx.proc, "nginx", own_group=False, stop_fn=ngx.stop)
    wrk = Wrk(ngx.url, o.concurrency, work, o.client_cpus)
    grpc_clients = GrpcClients(ngx.grpc_target, o.grpc_clients)
    time.sleep(1.0)  # load running before the first change
    marks: list[dict] = []  # every change: kind, version, start/end (monotonic), figures
    try:
        if zk_url:
            _two_phase(o, fleet, build, bases, zk_url, marks, log)
        else:
            _uncoordinated(o, fleet, build, bases, marks, log)
        time.sleep(1.0)
    finally:
        grpc_clients.stop()
        wrk_report = wrk.stop()
    if not zk_url:
        _swap_times(fleet, marks)
    result = analyze(kind, marks, wrk.rows(), grpc_clients.rows, wrk_report)
    for i in range(o.replicas):
        if fleet.servers[i] is not None and fleet.servers[i].proc.poll() is None:
            fleet.owned[i].stop()
    ngx.stop()
    return result


def _two_phase(o, fleet: Replicas, build: str, bases: list[str], zk_url: str, marks: list[dict], log) -> None:
    from hotserve.cluster import zk
    from hotserve.cluster.rollout import Rollout, RolloutOptions, member_state
    from hotserve.cluster.view import FleetView

    address = zk.FleetAddress.parse(zk_url)
    client = zk.connect(address)
    view = FleetView(client, address)
    try:
        for k in range(o.rollouts):
            v = k + 2
            _publish(build, bases, v)
            ok, _ = view.wait_until(lambda ms: True if len(ms) == o.replicas and all(
                member_state(d, MODEL, v)[0] == "ready" for d in ms.values()) else None, 60)
            if not ok:
                raise TimeoutError(f"version {v} was not prepared by every replica")
            start = time.monotonic()
            r = Rollout(client, address, MODEL, RolloutOptions(), who="bench").run(v)
            marks.append({"kind": "rollout", "version": v, "start": start, "end": time.monotonic(),
                          "ok": r.outcome == "done", "skew_ms": _ms(r.skew_seconds), "spread_ms": _ms(r.spread_seconds),
                          "message": r.message})
            if r.outcome != "done":
                log(f"    rollout {v}: {r.outcome}: {r.message}")
            time.sleep(o.interval)
        bad = o.rollouts + 2
        start = time.monotonic()
        _publish(build, fleet.bases, bad, corrupt_on=o.replicas - 1)
        view.wait_until(lambda ms: True if len(ms) == o.replicas and all(
            member_state(d, MODEL, bad)[0] in ("ready", "failed") for d in ms.values()) else None, 60)
        r = Rollout(client, address, MODEL, RolloutOptions(), who="bench").run(bad)
        marks.append({"kind": "corrupt copy", "version": bad, "start": start, "end": time.monotonic(),
                      "ok": r.outcome == "aborted", "message": r.message})
        log(f"    corrupt copy on replica-{o.replicas - 1}: rollout {r.outcome}")
        time.sleep(2.0)
        current = o.rollouts + 1
        for what, sig, i in (("SIGTERM", signal.SIGTERM, o.replicas - 1), ("kill -9", signal.SIGKILL, 0)):
            start = time.monotonic()
            code = fleet.stop(i, sig)
            fleet.start(i)  # converges to the fleet's version before it reports ready
            marks.append({"kind": what, "version": current, "start": start, "end": time.monotonic(), "ok": True,
                          "exit_code": code, "served_after_restart": fleet.serving(i)})
            log(f"    {what} replica-{i}: exit code {code}; restarted, serving {marks[-1]['served_after_restart']}")
            time.sleep(o.interval)
        start = time.monotonic()
        r = Rollout(client, address, MODEL, RolloutOptions(), who="bench").rollback()
        marks.append({"kind": "rollback", "version": r.version, "start": start, "end": time.monotonic(),
                      "ok": r.outcome == "done", "skew_ms": _ms(r.skew_seconds), "spread_ms": _ms(r.spread_seconds),
                      "message": r.message})
    finally:
        zk.close(client)


def _uncoordinated(o, fleet: Replicas, build: str, bases: list[str], marks: list[dict], log) -> None:
    for k in range(o.rollouts):
        v = k + 2
        start = time.monotonic()
        published = time.time()
        _publish(build, bases, v)
        _wait(lambda: all(fleet.serving(i) == v for i in range(o.replicas)), 60, f"every replica serving {v}")
        marks.append({"kind": "publish", "version": v, "start": start, "end": time.monotonic(), "ok": True,
                      "published_unix": published})
        time.sleep(o.interval)
    bad = o.rollouts + 2
    start = time.monotonic()
    _publish(build, bases, bad, corrupt_on=o.replicas - 1)
    _wait(lambda: all(fleet.serving(i) == bad for i in range(o.replicas - 1)), 60, "the good copies serving")
    marks.append({"kind": "corrupt copy", "version": bad, "start": start, "end": time.monotonic(), "ok": True,
                  "message": f"replica-{o.replicas - 1} keeps serving {o.rollouts + 1}"})
    log(f"    corrupt copy on replica-{o.replicas - 1}: the others serve {bad}, it keeps {o.rollouts + 1}")
    time.sleep(2.0)


def _swap_times(fleet: Replicas, marks: list[dict]) -> None:
    """Skew (publish -> last replica serving) and spread (first -> last) from each replica's events."""
    firsts: dict[int, list[float]] = {}
    for i in range(len(fleet.servers)):
        seen: dict[int, float] = {}
        for t, v in fleet.swaps(i):
            seen.setdefault(v, t)
        for v, t in seen.items():
            firsts.setdefault(v, []).append(t)
    for m in marks:
        times = firsts.get(m["version"], [])
        if len(times) == len(fleet.servers):
            m["skew_ms"] = _ms(max(times) - m["published_unix"])
            m["spread_ms"] = _ms(max(times) - min(times))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(max(0.0, seconds) * 1000, 2)


def analyze(kind: str, marks: list[dict], wrk_rows: list[list[tuple]], grpc_rows: list[list[tuple]], wrk_report: dict) -> dict:
    """Failures, wrong answers, old answers after a change was reported done, flaps."""
    changes = [m for m in marks if m["kind"] in ("rollout", "rollback", "publish")]
    connections = wrk_rows + grpc_rows
    requests = sum(len(c) for c in connections)
    failed_rest = sum(1 for c in wrk_rows for r in c if r[2] != 200)
    failed_grpc = sum(1 for c in grpc_rows for r in c if r[2] != 200)
    socket_errors = wrk_report["connect"] + wrk_report["read"] + wrk_report["write"] + wrk_report["timeout"]
    wrong = sum(1 for c in connections for r in c if r[2] == 200 and (r[4] is None or r[3] is None
                                                                   or abs(r[4] - r[3]) > 1e-3))
    # After change k reported done and before the next change or event began, every answer must be
    # version k's.
    old_after_done = 0
    starts = sorted(m["start"] for m in marks)
    for m in changes:
        until = next((t for t in starts if t > m["start"]), float("inf"))
        for c in connections:
            for r in c:
                if r[2] == 200 and r[0] > m["end"] and r[1] < until and r[4] is not None and round(r[4]) != m["version"]:
                    old_after_done += 1
    # Flaps while versions roll forward (before the corrupt copy, the restarts and the rollback).
    first_event = min((m["start"] for m in marks if m["kind"] not in ("rollout", "publish")), default=float("inf"))
    flaps = 0
    for c in connections:
        last = None
        for r in c:
            if r[2] != 200 or r[4] is None or r[0] >= first_event:
                continue
            v = round(r[4])
            if last is not None and v < last:
                flaps += 1
            last = v
    skews = sorted(m["skew_ms"] for m in changes if m["kind"] != "rollback" and m.get("skew_ms") is not None)
    spreads = sorted(m["spread_ms"] for m in changes if m["kind"] != "rollback" and m.get("spread_ms") is not None)
    events = []
    for m in marks:
        if m["kind"] == "corrupt copy":
            after = [round(r[4]) for c in connections for r in c
                     if r[2] == 200 and r[4] is not None and m["end"] < r[0] < m["end"] + 2.0]
            shares = {v: after.count(v) / len(after) for v in sorted(set(after))} if after else {}
            events.append({**m, "requests": len(after), "failed_rest": 0, "failed_grpc": 0, "answers_after": shares})
        if m["kind"] in ("SIGTERM", "kill -9", "rollback"):
            end = m["end"] + 0.5
            rest = [r for c in wrk_rows for r in c if m["start"] <= r[1] <= end]
            grpc = [r for c in grpc_rows for r in c if m["start"] <= r[1] <= end]
            events.append({**m, "requests": len(rest) + len(grpc), "failed_rest": sum(1 for r in rest if r[2] != 200),
                           "failed_grpc": sum(1 for r in grpc if r[2] != 200)})
    return {
        "fleet": kind, "changes": len([m for m in changes if m["kind"] != "rollback"]), "requests": requests,
        "failed_rest": failed_rest + socket_errors, "failed_grpc": failed_grpc,
        "failed_detail": {"REST non-200": failed_rest, "wrk socket errors": socket_errors, "gRPC": failed_grpc},
        "wrong_answers": wrong, "old_after_done": old_after_done, "flaps": flaps,
        "skew_p50_ms": percentile(skews, 50), "skew_p99_ms": percentile(skews, 99), "skew_max_ms": skews[-1] if skews else None,
        "spread_p50_ms": percentile(spreads, 50), "spread_p99_ms": percentile(spreads, 99),
        "aborted": [m["message"] for m in changes if not m["ok"]], "events": events, "marks": marks,
    }


# -- output ----------------------------------------------------------------------------------------------------
COLUMNS = [("fleet", "fleet", None, "<"), ("changes", "changes", "{:d}", ">"), ("skew p50 ms", "skew_p50_ms", "{:.1f}", ">"),
           ("skew p99 ms", "skew_p99_ms", "{:.1f}", ">"), ("skew max ms", "skew_max_ms", "{:.1f}", ">"),
           ("spread p99 ms", "spread_p99_ms", "{:.1f}", ">"), ("requests", "requests", "{:,d}", ">"),
           ("failed REST", "failed_rest", "{:d}", ">"), ("failed gRPC", "failed_grpc", "{:d}", ">"),
           ("old after done", "old_after_done", "{:d}", ">"),
           ("flaps", "flaps", "{:d}", ">"), ("wrong", "wrong_answers", "{:d}", ">")]
LABELS = {"two-phase": "hotserve --fleet (two-phase)", "uncoordinated": "uncoordinated (each replica swaps itself)"}
NOTES = [
    "skew: two-phase = the flip's znode write (when ZooKeeper applied it: the znode's mtime) -> the last replica's swap; "
    "uncoordinated = the publish's start (its first copy) -> the last replica's swap; each replica's Swapped event time, "
    "one clock (one machine). spread: first -> last replica's swap. The bench's ZooKeeper skips fsync (forceSync=no).",
    "failed REST / gRPC: non-200 answers and socket errors through nginx (wrk) / failed calls (Python clients) over the "
    "whole phase (two-phase: the rollouts, the SIGTERM, the kill -9 and the rollback); the event rows count those ending "
    "between the event's start and 0.5 s after its end (the restart included). nginx resends a REST request a stopping "
    "or killed replica did not answer; it cannot resend a gRPC call, so a call reaching a replica in the millisecond its "
    "gRPC server stops (cancelled by grpc.aio), or in flight on a killed one, fails (docs/fleet.md).",
    "old after done: answers (by the model's own output) from another version than the fleet's, among requests sent after "
    "a rollout reported done and finished before the next change began. flaps: a connection answered by a newer version, "
    "then an older one (outside a rollback). wrong: output and X-Model-Version disagree.",
]


def render(results: dict) -> tuple[str, str]:
    phases = results["phases"]
    heads = [c[0] for c in COLUMNS]
    aligns = [c[3] for c in COLUMNS]
    rows = [[LABELS.get(p["fleet"], p["fleet"]) if key == "fleet" else report._fmt(p.get(key), fmt)
             for _h, key, fmt, _a in COLUMNS] for p in phases]
    ev_heads, ev_aligns = ["event", "requests in window", "failed REST", "failed gRPC", "detail"], ["<", ">", ">", ">", "<"]
    ev_rows = []
    for p in phases:
        for e in p["events"]:
            if "exit_code" in e:
                detail = f"exit code {e['exit_code']}, restarted serving {e['served_after_restart']}"
            elif e["kind"] == "corrupt copy":
                shares = ", ".join(f"version {v}: {100 * f:.0f}%" for v, f in e["answers_after"].items())
                detail = (f"{'rollout aborted' if p['fleet'] == 'two-phase' else 'published'}; answers in the next 2 s: "
                          f"{shares}")
            else:
                detail = f"back to {e['version']}, skew {report._fmt(e.get('skew_ms'), '{:.1f}')} ms"
            ev_rows.append([f"{LABELS.get(p['fleet'], p['fleet']).split(' (')[0]}: {e['kind']}", f"{e['requests']:,}",
                            str(e["failed_rest"]), str(e["failed_grpc"]), detail])
    two = next((p for p in phases if p["fleet"] == "two-phase"), None)
    peer = next((p for p in phases if p["fleet"] == "uncoordinated"), None)
    ratio = ""
    if two and peer and two.get("spread_p99_ms") and peer.get("spread_p99_ms"):
        ratio = (f"spread p99, uncoordinated / two-phase: {peer['spread_p99_ms'] / max(two['spread_p99_ms'], 0.01):.1f}x; "
                 f"flaps {peer['flaps']} vs {two['flaps']}")
    meta = results["meta"]
    title = f"Fleet bench ({'smoke run' if meta['rollouts'] < 20 else 'full run'}): {meta['replicas']} replicas + nginx, " \
            f"{meta['rollouts']} rollouts, wrk -c {meta['concurrency']} + {meta['grpc_clients']} gRPC client(s) through nginx"
    m = (f"{meta['cpus']} cores; load avg at start {meta['loadavg_start']}, at end {meta.get('loadavg_end', '?')}; "
         f"hotserve {meta['hotserve_commit']}; {meta.get('elapsed_s', '?')} s")
    text = [title, m, "", report.text_table(heads, rows, aligns), ""]
    md = [f"# {title}", "", m, "", report.md_table(heads, rows, aligns), ""]
    if ev_rows:
        text += [report.text_table(ev_heads, ev_rows, ev_aligns), ""]
        md += [report.md_table(ev_heads, ev_rows, ev_aligns), ""]
    if ratio:
        text += [ratio, ""]
        md += [ratio, ""]
    for p in phases:
        if p["aborted"]:
            text.append(f"{p['fleet']}: aborted changes: {p['aborted']}")
    text += NOTES
    md += [f"- {n}" for n in NOTES]
    if meta.get("incomplete"):
        text.append(f"INCOMPLETE: {meta['incomplete']}")
        md.append(f"INCOMPLETE: {meta['incomplete']}")
    return "\n".join(text) + "\n", "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    log = session.begin()
    tools.ensure_binary("wrk", "wrk", not o.no_install)
    tools.ensure_binary("taskset", "util-linux", not o.no_install)
    for binary in ("nginx", "java"):
        if shutil.which(binary) is None and not os.path.exists(f"/usr/sbin/{binary}"):
            raise SystemExit(f"{binary} not found: scripts/install_system_deps.sh installs zookeeper and nginx")
    results = {"meta": {"rollouts": o.rollouts, "replicas": o.replicas, "concurrency": o.concurrency,
                        "grpc_clients": o.grpc_clients, "cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_start": session.loadavg(), "hotserve_commit": session.git_commit()},
               "phases": []}
    workdir = tempfile.mkdtemp(prefix="hotserve-fleet-bench-")
    with session.guarded(results, log, "process") as state:
        from hotserve.cluster.local import LocalZooKeeper

        zk = LocalZooKeeper(os.path.join(workdir, "zookeeper"))
        zk.start()
        procs.Owned(zk.proc, "zookeeper", own_group=False, stop_fn=zk.stop)
        log("two-phase fleet")
        results["phases"].append(run_phase("two-phase", o, workdir, zk.url("hotserve/bench"), log))
        if not o.skip_peer:
            log("uncoordinated fleet")
            results["phases"].append(run_phase("uncoordinated", o, workdir, None, log))
    text, md = render(results)
    print("\n" + text)
    os.makedirs(o.results_dir, exist_ok=True)
    with open(os.path.join(o.results_dir, "fleet.json"), "w") as f:
        json.dump(report._jsonable(results), f, indent=1)
        f.write("\n")
    with open(os.path.join(o.results_dir, "fleet.md"), "w") as f:
        f.write(md)
    if o.keep_workdir:
        print(f"workdir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    bad = state.failed or any(p["failed_rest"] or p["wrong_answers"] or p["old_after_done"]
                              for p in results["phases"] if p["fleet"] == "two-phase")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
