"""Load generators, each pinned to the client core with taskset and bounded in time:
wrk (HTTP/1.1, Lua scripts under bench/wrk/) and h2load (HTTP/2, used for gRPC)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import tempfile
import threading

from benchlib.payloads import Payload, grpc_frame

WRK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "wrk")


class LoadError(RuntimeError):
    pass


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def _run_bounded(cmd: list[str], env: dict, limit_s: float, out_path: str) -> tuple[int, float, str]:
    """Run cmd with stdout+stderr to out_path, kill it after limit_s; returns (exit code,
    CPU seconds it used, its output)."""
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    killer = threading.Timer(limit_s, lambda: proc.poll() is None and proc.kill())
    killer.daemon = True
    killer.start()
    try:
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        raise
    finally:
        killer.cancel()
    with open(out_path, "rb") as f:
        text = f.read().decode(errors="replace")
    return proc.returncode, ru.ru_utime + ru.ru_stime, text


def _body_file(payload: Payload, workdir: str) -> str:
    fd, path = tempfile.mkstemp(prefix=f"body-{payload.api.key}-b{payload.batch}-", suffix=".bin", dir=workdir)
    with os.fdopen(fd, "wb") as f:
        f.write(grpc_frame(payload.body) if payload.api.proto == "grpc" else payload.body)
    return path


def run_wrk(url: str, payload: Payload, concurrency: int, duration: float, *, threads: int, client_cpus: str,
            workdir: str, script: str = "post.lua", extra_env: dict | None = None, timeout_s: float = 10.0) -> dict:
    body = _body_file(payload, workdir)
    env = dict(os.environ,
               BENCH_BODY_FILE=body,
               BENCH_CONTENT_TYPE=payload.content_type,
               BENCH_HEADERS="\n".join(f"{k}: {v}" for k, v in payload.headers.items()),
               **(extra_env or {}))
    cmd = ["taskset", "-c", client_cpus, "wrk", "-t", str(threads), "-c", str(concurrency),
           "-d", f"{max(1, round(duration))}s", "--timeout", f"{timeout_s:g}s",
           "-s", os.path.join(WRK_DIR, script), url + payload.api.path]
    try:
        rc, cpu_s, out = _run_bounded(cmd, env, duration + timeout_s + 30, os.path.join(workdir, "wrk.out"))
    finally:
        os.unlink(body)
    m = re.search(r"^BENCH_JSON (\{.*\})$", out, re.M)
    if rc != 0 or not m:
        raise LoadError(f"wrk exited with {rc}:\n{' '.join(cmd)}\n{out[-2000:]}")
    s = json.loads(m.group(1))
    secs = s["duration_us"] / 1e6
    non2xx = s["status"]
    socket_errs = s["connect"] + s["read"] + s["write"] + s["timeout"]
    ok = max(0, s["requests"] - non2xx)
    return {
        "tool": f"wrk -t{threads} -c{concurrency}",
        "seconds": secs,
        "requests": s["requests"],
        "ok": ok,
        "rps": ok / secs,
        "rows_s": ok * payload.batch / secs,
        "p50_ms": s["p50_us"] / 1e3,
        "p90_ms": s["p90_us"] / 1e3,
        "p99_ms": s["p99_us"] / 1e3,
        "p999_ms": s["p999_us"] / 1e3,
        "max_ms": s["lat_max_us"] / 1e3,
        "errors": non2xx + socket_errs,
        "errors_detail": {"non2xx": non2xx, "connect": s["connect"], "read": s["read"], "write": s["write"], "timeout": s["timeout"]},
        "client_cpu_s": cpu_s,
        "client_cpu_pct": 100.0 * cpu_s / secs if secs else float("nan"),
    }


_H2_FINISHED = re.compile(r"finished in ([\d.]+)(ms|s),")
_H2_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
_H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_H2_DATA = re.compile(r"traffic: .*\((\d+)\) data")


def run_h2load(grpc_target: str, payload: Payload, concurrency: int, duration: float, *, client_cpus: str,
               workdir: str, response_frame_bytes: int) -> dict:
    """gRPC over h2load: -c N connections, one stream in flight on each (-m 1), the request
    framed once as gRPC (5-byte prefix + protobuf). h2load sees HTTP status only, and gRPC
    errors travel as HTTP 200 with grpc-status in the trailers and no message, so a call
    counts as successful only through its DATA bytes: every successful answer carries
    exactly response_frame_bytes (measured by the pre-flight check)."""
    body = _body_file(payload, workdir)
    log = os.path.join(workdir, "h2load.log")
    secs = max(1, round(duration))
    cmd = ["taskset", "-c", client_cpus, "h2load", "-c", str(concurrency), "-m", "1", "-t", "1",
           "-D", str(secs), "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers",
           "--log-file", log, f"http://{grpc_target}{payload.api.path}"]
    try:
        rc, cpu_s, out = _run_bounded(cmd, dict(os.environ), secs + 60, os.path.join(workdir, "h2load.out"))
    finally:
        os.unlink(body)
    fin, req, st, data = (r.search(out) for r in (_H2_FINISHED, _H2_REQUESTS, _H2_STATUS, _H2_DATA))
    if rc != 0 or not (fin and req and st and data):
        raise LoadError(f"h2load exited with {rc}:\n{' '.join(cmd)}\n{out[-2000:]}")
    elapsed = float(fin.group(1)) / (1000.0 if fin.group(2) == "ms" else 1.0)
    _total, _started, done, succeeded, failed, errored, timeouts = map(int, req.groups())
    non2xx = sum(map(int, st.groups()[1:]))
    answers_with_message = int(data.group(1)) // response_frame_bytes
    ok = min(succeeded, answers_with_message)
    grpc_errors = succeeded - ok
    lat = []
    with open(log) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                lat.append(int(parts[2]) / 1e3)
    os.unlink(log)
    lat.sort()
    return {
        "tool": f"h2load -c{concurrency} -m1",
        "seconds": elapsed,
        "requests": done,
        "ok": ok,
        "rps": ok / elapsed,
        "rows_s": ok * payload.batch / elapsed,
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "p999_ms": percentile(lat, 99.9),
        "max_ms": lat[-1] if lat else float("nan"),
        "errors": failed + grpc_errors,
        "errors_detail": {"non2xx": non2xx, "failed": failed, "errored": errored, "timeout": timeouts, "grpc_status": grpc_errors},
        "client_cpu_s": cpu_s,
        "client_cpu_pct": 100.0 * cpu_s / elapsed if elapsed else float("nan"),
    }
