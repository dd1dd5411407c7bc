"""Start the servers compared (hotserve's shapes and the peers: the lean app, the naive
FastAPI app, KServe's ModelServer, MLServer), on 127.0.0.1 only, each owned by the bench
(stopped by procs.cleanup() on every exit path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from benchlib import procs
from benchlib.payloads import MODEL

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_DIR = os.path.join(BENCH_DIR, "peers")


@dataclass
class Server:
    name: str
    url: str
    grpc_target: str
    owned: procs.Owned
    log_path: str
    apis: list[str]

    @property
    def pid(self) -> int:
        return self.owned.pid

    def stop(self) -> None:
        self.owned.stop()


def _get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait_http(owned: procs.Owned, url: str, log_path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _get(url) == 200:
            return
        if owned.proc.poll() is not None:
            raise RuntimeError(f"{owned.name} exited with {owned.proc.returncode}; log {log_path}:\n{_tail(log_path)}")
        time.sleep(0.1)
    raise TimeoutError(f"{owned.name} not ready at {url} within {timeout:g}s; log {log_path}:\n{_tail(log_path)}")


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return ""


def start_hotserve(base_path: str, workdir: str, apis: list[str], extra_args: list[str] | None = None,
                   name: str = "hotserve", src: str | None = None) -> Server:
    """`python -m hotserve serve` through hotserve.launcher.ServerProcess (the real command line).
    `src`: run hotserve from another source tree (e.g. an older commit's checkout) instead."""
    from hotserve.launcher import ServerProcess

    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "hotserve.log")
    env = dict(os.environ, PYTHONPATH=src) if src else None
    sp = ServerProcess(["--model_name", MODEL, "--model_base_path", base_path, *(extra_args or [])], log_path, env=env)
    sp.start(timeout=60)
    owned = procs.Owned(sp.proc, name, own_group=False, stop_fn=sp.stop)
    try:
        sp.wait_ready(timeout=60)
    except BaseException:
        owned.stop()
        raise
    return Server(name, sp.url, sp.grpc_target, owned, log_path, apis)


def _start_uvicorn_app(name: str, module: str, model_path: str, workdir: str, workers: int, uvicorn_args: list[str]) -> Server:
    """A peer app in bench/peers/ under uvicorn with `workers` worker processes, in this
    interpreter, answering TF Serving REST JSON at hotserve's path."""
    log_path = os.path.join(workdir, f"{name}.log")
    port = procs.free_port()
    cmd = [sys.executable, "-m", "uvicorn", f"{module}:app", "--app-dir", PEERS_DIR,
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), *uvicorn_args,
           "--no-access-log", "--log-level", "warning"]
    env = dict(os.environ, BENCH_MODEL_PATH=model_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=workdir)
    owned = procs.Owned(proc, name, own_group=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(owned, f"{url}/v1/models/{MODEL}", log_path, 60)
        _wait_all_workers(owned, workers, url)
    except BaseException:
        owned.stop()
        raise
    return Server(name, url, "", owned, log_path, ["tfs-json"])


def start_lean(model_path: str, workdir: str, workers: int = 2) -> Server:
    """bench/peers/lean_app.py exactly as issue 10 defines the lean app:
    uvicorn --workers 2 --loop uvloop --http httptools."""
    return _start_uvicorn_app("lean", "lean_app", model_path, workdir, workers, ["--loop", "uvloop", "--http", "httptools"])


def start_fastapi_naive(model_path: str, workdir: str, workers: int = 2) -> Server:
    """bench/peers/fastapi_naive.py under uvicorn's defaults (uvloop and httptools when
    installed, as they are here)."""
    return _start_uvicorn_app("fastapi-naive", "fastapi_naive", model_path, workdir, workers, [])


def start_kserve(python: str, model_path: str, workdir: str, apis: list[str], workers: int = 1) -> Server:
    """kserve.ModelServer with bench/peers/kserve_onnx.py's ONNX model, in bench/.venv-kserve.
    kserve's defaults except: 127.0.0.1, no log line per request, and --workers when not 1."""
    log_path = os.path.join(workdir, "kserve.log")
    run_dir = os.path.join(workdir, "kserve")
    os.makedirs(run_dir, exist_ok=True)
    http_port, grpc_port = procs.free_port(), procs.free_port()
    cmd = [python, os.path.join(PEERS_DIR, "kserve_onnx.py"), "--model_name", MODEL, "--model_path", model_path,
           "--http_port", str(http_port), "--grpc_port", str(grpc_port), "--enable_latency_logging", "false"]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    env = _foreign_venv_env()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=run_dir)
    owned = procs.Owned(proc, "kserve", own_group=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_http(owned, f"{url}/v1/models/{MODEL}", log_path, 120)
        if workers > 1:
            _wait_all_workers(owned, workers, url)
    except BaseException:
        owned.stop()
        raise
    return Server("kserve", url, f"127.0.0.1:{grpc_port}", owned, log_path, apis)


def _foreign_venv_env() -> dict[str, str]:
    """The environment for a peer running in its own venv: the project venv must not leak
    into that interpreter."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(var, None)
    return env


def _wait_all_workers(owned: procs.Owned, workers: int, url: str, timeout: float = 60) -> None:
    """uvicorn answers as soon as one worker is up; wait until the supervisor has all of its
    worker processes and each had time to load the model."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(procs.tree_pids(owned.pid)) >= workers + 1:
            break
        time.sleep(0.1)
    # A few more requests spread over the workers (each loads the model at import).
    for _ in range(4 * workers):
        _get(f"{url}/v1/models/{MODEL}")
    time.sleep(1.0)


def start_mlserver(mlserver_exe: str, model_path: str, workdir: str) -> Server:
    """MLServer from bench/.venv-mlserver with the custom runtime in bench/peers/mlserver/."""
    log_path = os.path.join(workdir, "mlserver.log")
    repo = os.path.join(workdir, "mlserver-repo")
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(os.path.join(PEERS_DIR, "mlserver"), repo,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "README*"))
    shutil.copy(model_path, os.path.join(repo, MODEL, "model.onnx"))
    http_port, grpc_port, metrics_port = procs.free_port(), procs.free_port(), procs.free_port()
    env = dict(_foreign_venv_env(),
               MLSERVER_HOST="127.0.0.1",
               MLSERVER_HTTP_PORT=str(http_port),
               MLSERVER_GRPC_PORT=str(grpc_port),
               MLSERVER_METRICS_PORT=str(metrics_port),
               MLSERVER_METRICS_DIR=os.path.join(workdir, "mlserver-metrics"))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([mlserver_exe, "start", repo], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=repo)
    owned = procs.Owned(proc, "mlserver", own_group=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_http(owned, f"{url}/v2/models/{MODEL}/ready", log_path, 180)
    except BaseException:
        owned.stop()
        raise
    return Server("mlserver", url, f"127.0.0.1:{grpc_port}", owned, log_path, ["v2-json"])
