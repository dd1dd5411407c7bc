"""Find or install what the bench needs outside the project venv: wrk and h2load (Debian
packages), MLServer and KServe (each in its own virtualenv, bench/.venv-mlserver and
bench/.venv-kserve, with the project's onnxruntime version)."""

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
MLSERVER_PIP = ["mlserver", "uvloop<0.22", "numpy"]
KSERVE_VENV = os.path.join(BENCH_DIR, ".venv-kserve")
# kserve 0.21.0 (September 2026, the newest on PyPI when this was written) installs here with
# Python 3.11; the spec stays open so a newer one is taken. It does not depend on onnxruntime.
KSERVE_PIP = ["kserve", "numpy"]

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


def _ensure_venv(what: str, venv: str, pip_spec: list[str], probe: list[str], install: bool, skip_flag: str) -> dict[str, str]:
    """A peer's own virtualenv under bench/ (not a project dependency: its pins may conflict
    with hotserve's), made with `pip install pip_spec` when missing. Returns the installed
    versions of the `probe` distributions. An existing venv is kept as it is, except that
    onnxruntime is brought to the version pinned in pip_spec (every server runs the same one)."""
    py = os.path.join(venv, "bin", "python")
    probe_cmd = [py, "-c", "import importlib.metadata as m, sys; print(*(m.version(p) for p in sys.argv[1:]))", *probe]

    def versions() -> dict[str, str] | None:
        r = subprocess.run(probe_cmd, capture_output=True, text=True, timeout=120)
        return dict(zip(probe, r.stdout.split())) if r.returncode == 0 else None

    def pip(args: list[str]) -> None:
        r = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise ToolError(f"pip install {' '.join(args)} into {venv} failed (delete the folder to start over):\n"
                            f"{r.stdout[-3000:]}{r.stderr[-3000:]}")

    found = versions() if os.path.exists(py) else None
    if found is None:
        if not install:
            raise ToolError(f"{what} is not installed in {venv}; run without --no-install (or use {skip_flag})")
        print(f"installing {what} into {venv} (its own virtualenv, not a project dependency): pip install {' '.join(pip_spec)}",
              flush=True)
        if not os.path.exists(py):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
        pip(pip_spec)
        found = versions()
        if found is None:
            raise ToolError(f"{what} venv {venv} is broken after install (delete it to reinstall)")
    ort_pin = next((x for x in pip_spec if x.startswith("onnxruntime==")), None)
    if ort_pin and found.get("onnxruntime") != ort_pin.split("==", 1)[1]:
        if not install:
            raise ToolError(f"{venv} has onnxruntime {found.get('onnxruntime')}, the bench wants {ort_pin}; "
                            f"run without --no-install")
        print(f"  {venv}: onnxruntime {found.get('onnxruntime')} -> {ort_pin}", flush=True)
        pip([ort_pin])
        found = versions() or found
    return found


def _ort_pin() -> str:
    """The project's onnxruntime version, so every server in the bench runs the same one."""
    import onnxruntime

    return f"onnxruntime=={onnxruntime.__version__}"


def ensure_mlserver(install: bool) -> tuple[str, str]:
    """Path of the mlserver executable in bench/.venv-mlserver, and its version."""
    found = _ensure_venv("MLServer", MLSERVER_VENV, [*MLSERVER_PIP, _ort_pin()], ["mlserver", "onnxruntime", "uvloop"],
                         install, "--skip-mlserver")
    py = os.path.join(MLSERVER_VENV, "bin", "python")
    uvloop = found["uvloop"]
    if tuple(int(p) for p in uvloop.split(".")[:2]) >= (0, 22) and install:
        # A venv made before the pin above.
        subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "uvloop<0.22"], check=True, timeout=600)
        uvloop = _ensure_venv("MLServer", MLSERVER_VENV, [], ["uvloop"], False, "--skip-mlserver")["uvloop"]
    return os.path.join(MLSERVER_VENV, "bin", "mlserver"), \
        f"mlserver {found['mlserver']}, onnxruntime {found['onnxruntime']}, uvloop {uvloop}"


def ensure_kserve(install: bool) -> tuple[str, dict[str, str]]:
    """Interpreter of bench/.venv-kserve (kserve's ModelServer runs there), and the versions
    of kserve and what serves its requests."""
    found = _ensure_venv("KServe", KSERVE_VENV, [*KSERVE_PIP, _ort_pin()],
                         ["kserve", "onnxruntime", "fastapi", "uvicorn", "uvloop", "httptools", "grpcio"],
                         install, "--skip-kserve")
    return os.path.join(KSERVE_VENV, "bin", "python"), found


def check_fastapi_peers() -> str:
    """The lean and naive FastAPI peers run in this interpreter (the `bench` extra: fastapi,
    pydantic; uvicorn, uvloop, httptools and orjson come with hotserve)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("fastapi", "pydantic", "uvicorn", "uvloop", "httptools", "orjson")
    try:
        return ", ".join(f"{n} {version(n)}" for n in names)
    except PackageNotFoundError as exc:
        raise ToolError(f"the FastAPI peers (lean, naive) need {', '.join(names)} in this interpreter ({sys.executable}): "
                        f"pip install -e '.[bench]', or leave them out with --skip-lean --skip-fastapi ({exc} missing)") from None
