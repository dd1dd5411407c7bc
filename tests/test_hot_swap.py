"""Invariants 1, 3 and 6: swaps under concurrent load fail no request, each response comes
from exactly one version (its output proves which), and no client ever sees a version go
backwards."""

import httpx

from conftest import LoadClients, affine_version, status, wait_for, wait_state


def test_twelve_swaps_under_load_fail_nothing(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    with LoadClients(server.url, n=4) as clients:
        clients.wait_requests(50)
        for v in range(2, 14):
            affine_version(base, v, build)
            wait_state(server, v, "AVAILABLE")
            # Each new version must actually take traffic before the next publish.
            wait_for(lambda: v in clients.versions, 20, f"clients to see version {v}")
            clients.wait_requests(20)
    assert clients.errors == [], clients.errors[:5]
    assert set(range(1, 14)) <= clients.versions
    assert clients.count > 500
    final = status(server)
    assert final[13]["state"] == "AVAILABLE"
    # Every replaced version was drained and unloaded, not leaked.
    wait_for(lambda: all(status(server)[v]["state"] == "END" for v in status(server) if v != 13), 20,
             "old versions to reach END")


def test_every_response_names_its_version(repo, start_server):
    base, build = repo
    affine_version(base, 3, build)
    server = start_server(base)
    with httpx.Client() as c:
        r = c.post(server.url + "/v1/models/m:predict", json={"instances": [[1, 2, 3, 4]]})
        assert r.headers["x-model-version"] == "3"
        assert r.json() == {"predictions": [[4.0, 5.0, 6.0, 7.0]]}
        for path in ("/v1/models/m/metadata", "/v1/models/m/versions/3/metadata"):
            r = c.get(server.url + path)
            assert r.headers["x-model-version"] == "3"
            assert r.json()["model_spec"]["version"] == "3"
        bad = c.post(server.url + "/v1/models/m:predict", json={"instances": [[1, 2]]})
        assert bad.status_code == 400 and bad.headers["x-model-version"] == "3"


def test_latest_n_serves_several_versions_and_explicit_version_requests(repo, start_server):
    base, build = repo
    for v in (1, 2, 3):
        affine_version(base, v, build)
    server = start_server(base, "--num_versions", "2")
    wait_state(server, 2, "AVAILABLE")
    with httpx.Client() as c:
        for v in (2, 3):
            r = c.post(f"{server.url}/v1/models/m/versions/{v}:predict", json={"instances": [[0, 0, 0, 0]]})
            assert r.status_code == 200 and r.json()["predictions"] == [[v] * 4]
        r = c.post(f"{server.url}/v1/models/m/versions/1:predict", json={"instances": [[0, 0, 0, 0]]})
        assert r.status_code == 404 and "versions being served: 2, 3" in r.json()["error"]
        r = c.post(f"{server.url}/v1/models/m:predict", json={"instances": [[0, 0, 0, 0]]})
        assert r.headers["x-model-version"] == "3"
    assert 1 not in status(server)  # never aspired, never loaded
