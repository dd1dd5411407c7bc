"""--inference_threading=auto: a cheap model runs small requests on the event loop, a slow one
stays in the worker pool, and hot swaps keep every invariant either way."""

import time

import httpx

from conftest import LoadClients, affine_version, python_version, wait_for, wait_state

AUTH = {"Authorization": "Bearer t"}


def _mode(server) -> str:
    return httpx.get(server.url + "/v1/admin/models/m", headers=AUTH).json()["inference_threading"]


def test_cheap_model_goes_inline_and_swaps_stay_clean(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--inference_threading", "auto", "--admin_token", "t")
    assert _mode(server) == "worker pool"  # no samples yet: hop
    with LoadClients(server.url, n=4) as clients:
        clients.wait_requests(100)
        wait_for(lambda: _mode(server) == "event loop (small requests)", 10, "the cheap model to run inline")
        for v in range(2, 6):
            affine_version(base, v, build)
            wait_state(server, v, "AVAILABLE")
            wait_for(lambda: v in clients.versions, 20, f"version {v} to serve")
            clients.wait_requests(100)
    assert clients.errors == [], clients.errors[:5]


def test_slow_model_stays_in_the_worker_pool(repo, start_server):
    base, build = repo
    python_version(base, 1, build, sleep=0.002)  # 2 ms per inference, over the 300 us threshold
    server = start_server(base, "--inference_threading", "auto", "--admin_token", "t")
    with httpx.Client() as c:
        for _ in range(80):
            assert c.post(server.url + "/v1/models/m:predict", json={"instances": [[1, 1, 1, 1]]}).status_code == 200
    time.sleep(0.6)  # several analysis rounds (every 0.25 s)
    assert _mode(server) == "worker pool"
