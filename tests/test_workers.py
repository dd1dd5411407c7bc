"""--num_workers: several processes on one port keep every hot-update invariant, each picks up
every publish, a crashed worker is restarted, and routing decisions reach all workers."""

import os
import re
import signal
import time

import httpx

from conftest import LoadClients, affine_version, wait_for

X = {"instances": [[0.0, 0.0, 0.0, 0.0]]}


def _worker_pids(server) -> dict[int, int]:
    pids = {}
    for m in re.finditer(r"worker (\d+) started \(pid (\d+)\)", server.log()):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


def _all_available(server, version: int, workers: int = 2) -> bool:
    log = server.log()
    return all(f"[worker {w}] hotserve.manager: model m version {version}: available" in log for w in range(workers))


def test_two_workers_swap_under_load_and_each_picks_up_every_publish(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--num_workers", "2")
    # Each client keeps one connection, so it talks to one worker: its versions never go back.
    with LoadClients(server.url, n=6) as clients:
        clients.wait_requests(50)
        for v in range(2, 7):
            affine_version(base, v, build)
            wait_for(lambda: _all_available(server, v), 20, f"both workers to load version {v}")
            wait_for(lambda: v in clients.versions, 20, f"clients to see version {v}")
            clients.wait_requests(30)
    assert clients.errors == [], clients.errors[:5]
    assert set(range(1, 7)) <= clients.versions
    wait_for(lambda: "memory per worker (RSS): worker 0:" in server.log(), 10, "the supervisor's memory report")
    r = httpx.get(server.url + "/metrics")
    assert re.search(r'hotserve_process_resident_memory_bytes\{worker="[01]"\} \d+', r.text)


def test_a_crashed_worker_is_restarted(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--num_workers", "2")
    # /readyz answered by one worker says nothing of the other: kill worker 1 only once it loaded,
    # or the "loaded twice" count below can never be reached.
    wait_for(lambda: _all_available(server, 1), 20, "both workers to load version 1")
    victim = _worker_pids(server)[1]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(re.findall(r"worker 1 started", server.log())) == 2, 20, "worker 1 to be restarted")
    wait_for(lambda: server.log().count("[worker 1] hotserve.manager: model m version 1: available") == 2, 20,
             "the new worker 1 to load the model")
    for _ in range(20):  # fresh connections land on either worker
        with httpx.Client() as c:
            assert c.post(server.url + "/v1/models/m:predict", json=X).status_code == 200
    assert "worker 1 (pid %d) exited" % victim in server.log()


def test_routing_changes_reach_every_worker(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    affine_version(base, 2, build)
    server = start_server(base, "--num_workers", "2", "--num_versions", "2", "--admin_token", "t")
    wait_for(lambda: _all_available(server, 1) and _all_available(server, 2), 20, "both versions on both workers")
    r = httpx.post(server.url + "/v1/admin/models/m/rollback", json={"to": 1}, headers={"Authorization": "Bearer t"})
    assert r.status_code == 200
    # The worker that took the call wrote the routing state; the other follows it.

    def all_on_one():
        versions = set()
        for _ in range(16):
            with httpx.Client() as c:
                versions.add(c.post(server.url + "/v1/models/m:predict", json=X).headers["x-model-version"])
        return versions == {"1"}

    wait_for(all_on_one, 20, "every worker to serve version 1")
    assert "routing changed by another worker" in server.log()
    time.sleep(0.2)
