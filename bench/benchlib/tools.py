"""Find or install what the bench needs outside the project venv: wrk and h2load (Debian
packages) and MLServer (its own virtualenv under bench/.venv-mlserver)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLSERVER_VENV = os.path.join(BENCH_DIR, ".venv-mlserver")
# The newest MLServer that installed here was 1.7.1; the spec stays open so a newer one is taken.
# uvloop<0.22: MLServer 1.7.1's inference workers call asyncio.get_event_loop() with no loop,
# which uvloop 0.22 turned into an error (SeldonIO/MLServer#2286, unreleased fix in #2285).
MLSERVER_PIP = ["mlserver", "uvloop<0.22", "onnxruntime", "numpy"]

_apt_updated = False


class ToolError(RuntimeError):
    pass


def _apt_install(package: str) -> None:
    """apt-get install -y package; apt-get update first only when the install fails without it."""
    global _apt_updated
    if shutil.which("apt-get") is None:
        raise ToolError(f"{package} is missing and there is no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for attempt in range(2):
        if attempt == 1:
            if _apt_updated:
                break
            print("  apt-get update", flush=True)
            subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=600)
            _apt_updated = True
        print(f"  apt-get install -y {package}", flush=True)
        r = subprocess.run(["apt-get", "install", "-y", package], env=env, capture_output=True, text=True, timeout=600)
        if r.returncode == 0:
            return
    raise ToolError(f"apt-get install -y {package} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def ensure_binary(binary: str, package: str, install: bool) -> str:
    path = shutil.which(binary)
    if path:
        return path
    if not install:
        raise ToolError(f"{binary} not found (Debian package {package}); run without --no-install or apt-get install -y {package}")
    print(f"{binary} not found: installing the Debian package {package}", flush=True)
    _apt_install(package)
    path = shutil.which(binary)
    if not path:
        raise ToolError(f"{binary} still not found after installing {package}")
    return path


def tool_version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (r.stdout + r.stderr).strip().splitlines()
    return out[0].strip() if out else "?"


def ensure_mlserver(install: bool) -> tuple[str, str]:
    """Path of the mlserver executable in bench/.venv-mlserver, and its version."""
    exe = os.path.join(MLSERVER_VENV, "bin", "mlserver")
    py = os.path.join(MLSERVER_VENV, "bin", "python")
    if not os.path.exists(exe):
        if not install:
            raise ToolError(f"MLServer is not installed in {MLSERVER_VENV}; run without --no-install (or use --skip-mlserver)")
        print(f"installing MLServer into {MLSERVER_VENV} (its own virtualenv, not a project dependency)", flush=True)
        if not os.path.exists(py):
            subprocess.run([sys.executable, "-m", "venv", MLSERVER_VENV], check=True, timeout=300)
        r = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", *MLSERVER_PIP],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0 or not os.path.exists(exe):
            raise ToolError(f"pip install {' '.join(MLSERVER_PIP)} into {MLSERVER_VENV} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    probe = [py, "-c", "import importlib.metadata as m; print(*(m.version(p) for p in ('mlserver', 'onnxruntime', 'uvloop')))"]
    r = subprocess.run(probe, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise ToolError(f"MLServer venv {MLSERVER_VENV} is broken (delete it to reinstall):\n{r.stderr[-2000:]}")
    mls, ort, uvloop = r.stdout.split()
    if tuple(int(p) for p in uvloop.split(".")[:2]) >= (0, 22) and install:
        # A venv made before the pin above.
        subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "uvloop<0.22"], check=True, timeout=600)
        uvloop = subprocess.run(probe, capture_output=True, text=True, timeout=120).stdout.split()[2]
    return exe, f"mlserver {mls}, onnxruntime {ort}, uvloop {uvloop}"


def check_fastapi() -> str:
    try:
        import fastapi
        import pydantic
    except ImportError as exc:
        raise ToolError(f"the FastAPI peer needs fastapi and pydantic in this interpreter ({sys.executable}): "
                        f"pip install -e '.[bench]' (or pip install fastapi), or pass --only/--skip-fastapi ({exc})") from None
    return f"fastapi {fastapi.__version__}, pydantic {pydantic.VERSION}"
