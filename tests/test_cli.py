"""The command line: TF Serving flag names, dashed spellings, help, publish and the demo."""

import subprocess
import sys

import httpx

from conftest import affine_version
from hotserve.examples import make_affine
from hotserve.launcher import ServerProcess


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hotserve", *args], capture_output=True, text=True, timeout=timeout)


def test_serve_help_documents_tf_serving_flags():
    out = _run("serve", "--help")
    assert out.returncode == 0
    for flag in ("--port", "--rest_api_port", "--model_name", "--model_base_path", "--file_system_poll_wait_seconds",
                 "--rest_api_num_threads", "--rest-api-port", "--host", "--version_settle_seconds",
                 "--tensorflow_intra_op_parallelism"):
        assert flag in out.stdout, flag


def test_bad_flags_get_clear_errors(tmp_path):
    out = _run("serve", "--model_name", "m")
    assert out.returncode == 2 and "--model_base_path is required" in out.stderr
    out = _run("serve", "--model_base_path", str(tmp_path), "--rest_api_port", "-3")
    assert out.returncode == 2 and "must be >= 0" in out.stderr
    out = _run("serve", "--model_base_path", str(tmp_path), "--file_system_poll_wait_seconds", "soon")
    assert out.returncode == 2 and "expected a float" in out.stderr


def test_dashed_flags_and_bare_tf_serving_invocation(tmp_path):
    base = str(tmp_path / "m")
    affine_version(base, 1, str(tmp_path))
    # No subcommand and dashed spellings, as an edited tensorflow_model_server command line would be.
    server = ServerProcess(["--model-name", "dashed", "--model-base-path", base, "--file-system-poll-wait-seconds", "0.5"],
                           str(tmp_path / "log"), subcommand=False)
    with server:
        server.wait_ready()
        r = httpx.post(server.url + "/v1/models/dashed:predict", json={"instances": [[0, 0, 0, 0]]})
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
    out = _run("--model_base_path", base, "--rest_api_port", "99999")
    assert out.returncode == 2 and "ports go up to 65535" in out.stderr


def test_publish_command(tmp_path):
    src = make_affine(str(tmp_path / "src" / "model.onnx"), 1.0)
    base = str(tmp_path / "m")
    out = _run("publish", src, "--model_base_path", base)
    assert out.returncode == 0 and "published version 1" in out.stdout
    out = _run("publish", src, "--model-base-path", base, "--version", "1")
    assert out.returncode == 1 and "already exists" in out.stderr


def test_demo_runs_and_reports_no_failures():
    out = _run("demo", "--duration", "5", "--publish_interval", "1", "--concurrency", "2", timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "failed requests             0" in out.stdout
    assert "publish->served" in out.stdout
