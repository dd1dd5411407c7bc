"""Invariants 1 and 4: a version is unloaded only after its last in-flight request finished,
and loading never runs on the event loop."""

import os
import threading
import time

import httpx

from conftest import python_version, status, wait_for, wait_state


def test_slow_in_flight_request_keeps_old_version_until_it_returns(repo, start_server, tmp_path):
    base, build = repo
    gate, entered = str(tmp_path / "gate"), str(tmp_path / "entered")
    python_version(base, 1, build, gate=gate, entered=entered)
    server = start_server(base)
    result = {}

    def slow_request():
        r = httpx.post(server.url + "/v1/models/m:predict", json={"instances": [[999.0, 0, 0, 0]]}, timeout=60)
        result["status"], result["version"], result["body"] = r.status_code, r.headers.get("x-model-version"), r.json()

    t = threading.Thread(target=slow_request)
    t.start()
    try:
        wait_for(lambda: os.path.exists(entered), 20, "the slow request to reach the model")
        python_version(base, 2, build)
        wait_state(server, 2, "AVAILABLE")
        wait_for(lambda: httpx.post(server.url + "/v1/models/m:predict", json={"instances": [[1, 1, 1, 1]]}).headers["x-model-version"] == "2",
                 20, "version 2 to take new requests")
        # The old version is retired but cannot be unloaded: one request still runs on it.
        time.sleep(0.5)
        assert status(server)[1]["state"] == "UNLOADING"
        assert "version 1: unloaded" not in server.log()
    finally:
        open(gate, "w").close()
        t.join(60)
    assert result["status"] == 200 and result["version"] == "1"
    assert result["body"]["predictions"] == [[1000.0, 1.0, 1.0, 1.0]]
    wait_state(server, 1, "END")


def test_slow_load_does_not_block_requests(repo, start_server):
    base, build = repo
    python_version(base, 1, build)
    server = start_server(base)
    python_version(base, 2, build, load_sleep=4.0)
    wait_state(server, 2, "LOADING")
    served_during_load = 0
    with httpx.Client(timeout=10) as c:
        while status(server)[2]["state"] == "LOADING":
            r = c.post(server.url + "/v1/models/m:predict", json={"instances": [[0, 0, 0, 0]]})
            assert r.status_code == 200 and r.headers["x-model-version"] == "1"
            assert c.get(server.url + "/healthz").status_code == 200
            if status(server)[2]["state"] == "LOADING":
                served_during_load += 1
            if served_during_load > 200:
                break
    # If the load held the event loop, no request could have completed while it ran.
    assert served_during_load >= 5
    wait_state(server, 2, "AVAILABLE")
