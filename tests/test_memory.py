"""--memory_budget: when a new version does not fit beside the old one, the manager waits,
unloads first (resource-preserving), or refuses, as configured; memory is reported per version."""

import re

import httpx

from conftest import LoadClients, python_version, status, wait_for, wait_state

MB = 1 << 20
X = {"instances": [[1.0, 1.0, 1.0, 1.0]]}


def test_refuse_keeps_the_old_version(repo, start_server):
    base, build = repo
    python_version(base, 1, build, extra_bytes=2 * MB)
    server = start_server(base, "--memory_budget", "3MiB", "--memory_budget_policy", "refuse")
    with LoadClients(server.url, n=2) as clients:
        python_version(base, 2, build, extra_bytes=2 * MB)
        wait_state(server, 2, "END")
        clients.wait_requests(20)
    st = status(server)[2]["status"]
    assert st["error_code"] == "RESOURCE_EXHAUSTED" and "memory budget exceeded" in st["error_message"]
    assert clients.errors == [] and clients.versions == {1}
    _, body = server.get("/metrics")
    assert b'hotserve_model_loads_total{model="m",outcome="refused"} 1' in body
    assert re.search(rb'hotserve_version_memory_bytes\{model="m",version="1",kind="measured"\} \d+', body)


def test_unload_first_swaps_within_the_budget(repo, start_server):
    base, build = repo
    python_version(base, 1, build, extra_bytes=2 * MB)
    server = start_server(base, "--memory_budget", "3MiB", "--memory_budget_policy", "unload_first")
    python_version(base, 2, build, extra_bytes=2 * MB)
    wait_state(server, 2, "AVAILABLE")
    assert status(server)[1]["state"] == "END"
    log = server.log()
    assert "resource-preserving" in log
    assert log.index("version 1: unloaded") < log.index("version 2: loading")
    r = httpx.post(server.url + "/v1/models/m:predict", json=X)
    assert r.headers["x-model-version"] == "2"


def test_wait_loads_once_memory_frees_up(tmp_path, start_server):
    a, b, build = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "build")
    python_version(a, 1, build, extra_bytes=2 * MB)
    python_version(b, 1, build, extra_bytes=2 * MB)
    cfg = tmp_path / "models.yaml"
    cfg.write_text(f"model_config_list:\n  - {{name: a, base_path: {a}}}\n")
    server = start_server(None, "--model_config_file", str(cfg), "--memory_budget", "3MiB", "--admin_token", "t",
                          "--reload_config_timeout_seconds", "2")
    wait_state(server, 1, "AVAILABLE", model="a")
    cfg.write_text(f"model_config_list:\n  - {{name: a, base_path: {a}}}\n  - {{name: b, base_path: {b}}}\n")
    r = httpx.post(server.url + "/v1/admin/config:reload", headers={"Authorization": "Bearer t"}, timeout=60)
    assert r.status_code == 503 and "'b'" in r.json()["error"]  # b cannot fit yet: bounded, clear answer
    wait_for(lambda: "waiting for memory" in status(server, "b")[1]["status"]["error_message"], 10,
             "b to report that it waits for memory")
    assert status(server, "b")[1]["state"] == "START"
    assert httpx.post(server.url + "/v1/models/a:predict", json=X).status_code == 200
    r = httpx.post(server.url + "/v1/admin/models/a/unload", headers={"Authorization": "Bearer t"}, timeout=60)
    assert r.status_code == 200
    wait_state(server, 1, "AVAILABLE", model="b")
    assert httpx.post(server.url + "/v1/models/b:predict", json=X).status_code == 200
