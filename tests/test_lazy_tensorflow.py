"""TensorFlow is loaded only when a SavedModel version is: a server with ONNX models never
maps TensorFlow's libraries, so it starts fast and stays small."""

import os

import pytest

from conftest import affine_version, wait_state
from hotserve.examples import make_affine_savedmodel
from hotserve.repository.publish import publish

pytest.importorskip("tensorflow")


def _maps_tensorflow(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "tensorflow" in f.read()


def test_tensorflow_loaded_only_for_savedmodels(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base)
    assert not _maps_tensorflow(server.proc.pid)
    publish(make_affine_savedmodel(os.path.join(build, "sm"), 2.0), base, 2)
    wait_state(server, 2, "AVAILABLE", timeout=60)
    assert _maps_tensorflow(server.proc.pid)  # the probe does see TensorFlow once it is loaded
