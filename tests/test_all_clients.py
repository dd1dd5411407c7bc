"""The drop-in promise in one test: one server, versions alternating between ONNX and
SavedModel, and all four client families (plain HTTP on TF Serving REST,
tensorflow-serving-api gRPC, tritonclient.http, tritonclient.grpc) running across every swap
with zero failures and versions that never go backwards for any client."""

import os

import httpx
import pytest

from clients import FAMILIES, FamilyClients
from conftest import affine_version, wait_for, wait_state
from hotserve.examples import make_affine_savedmodel
from hotserve.repository.publish import publish

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")
pytest.importorskip("tritonclient.http")
pytest.importorskip("tritonclient.grpc")


def test_all_client_families_across_onnx_and_savedmodel_swaps(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)  # ONNX
    server = start_server(base)
    savedmodel_versions = {2, 4}
    platforms: dict[int, str] = {}
    with FamilyClients(server, list(FAMILIES.items()), rows=2) as clients:
        for v in range(2, 6):
            if v in savedmodel_versions:
                src = make_affine_savedmodel(os.path.join(build, f"sm{v}"), float(v))
                publish(src, base, v)
            else:
                affine_version(base, v, build)
            wait_state(server, v, "AVAILABLE", timeout=60)
            platforms[v] = httpx.get(f"{server.url}/v2/models/m/versions/{v}").json()["platform"]
            wait_for(lambda: all(v in s for s in clients.seen.values()), 30, f"every client family to see version {v}")
    errors, seen = clients.errors, clients.seen
    assert errors == [], errors[:5]
    for name, versions in seen.items():
        assert set(range(2, 6)) <= set(versions), (name, sorted(set(versions)))
    assert platforms == {2: "tensorflow_savedmodel", 3: "onnxruntime_onnx", 4: "tensorflow_savedmodel", 5: "onnxruntime_onnx"}
