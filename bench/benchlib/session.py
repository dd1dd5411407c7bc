"""What every bench command does around its measurements: record the commit and load average,
turn SIGTERM/SIGHUP/SIGINT into a clean stop, and stop every process it started, however the
run ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import traceback
import types

from benchlib import procs

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO_DIR, "diff", "--quiet", "HEAD", "--", "src"], capture_output=True, timeout=10).returncode
        return (sha or "?") + (" + uncommitted changes in src/" if dirty == 1 else "")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def _raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def begin():
    """Start a bench command: signals stop it cleanly (SIGINT also when started with it ignored,
    as background jobs are), and hotserve must be importable. Returns the log function."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _raise_interrupt)
    try:
        import hotserve  # noqa: F401
    except ImportError:
        raise SystemExit(f"hotserve is not importable from {sys.executable}: run this with the project's venv python") from None

    def log(msg: str) -> None:
        print(msg, flush=True)

    return log


@contextlib.contextmanager
def guarded(results: dict, log, what: str = "process"):
    """Run a bench body. An interrupt or an error marks results["meta"]["incomplete"] and sets
    .failed on the yielded state; every process is stopped and the end time recorded either way."""
    state = types.SimpleNamespace(failed=False)
    t_start = time.monotonic()
    try:
        yield state
    except KeyboardInterrupt:
        state.failed = True
        results["meta"]["incomplete"] = "interrupted"
        log(f"\ninterrupted: stopping every {what} the bench started")
    except Exception as exc:
        state.failed = True
        results["meta"]["incomplete"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        procs.cleanup()
        results["meta"]["loadavg_end"] = loadavg()
        results["meta"]["elapsed_s"] = round(time.monotonic() - t_start, 1)
