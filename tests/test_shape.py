"""The serving shape hotserve picks with default flags (server/shape.py): table-tested on given
machines, and once for real (default flags on this machine: one worker per core, shown in status)."""

from __future__ import annotations

import httpx
import pytest

from conftest import affine_version
from hotserve.core.config import ModelConfig
from hotserve.launcher import ServerProcess
from hotserve.server.shape import choose

GiB = 1 << 30
M = [ModelConfig("m", "/nowhere")]


@pytest.mark.parametrize("cores, memory, size, workers, intra", [
    (1, 8 * GiB, 1 << 20, 1, 1),  # one core: one process
    (2, 8 * GiB, 1 << 20, 2, 1),  # one worker per core, one intra-op thread each
    (8, 64 * GiB, 1 << 20, 4, 2),  # capped at 4 workers; the cores left go to intra-op threads
    (8, 8 * GiB, 3 * GiB, 1, 8),  # copies would not fit in half the memory: one worker, all cores to it
    (4, 8 * GiB, 1 * GiB, 4, 1),
    (4, 5 * GiB, 1 * GiB, 2, 2),  # two copies fit in half of 5 GiB
])
def test_default_shape_fits_the_cores_and_the_memory(cores, memory, size, workers, intra):
    shape = choose(M, cores=cores, memory=memory, size=size)
    assert (shape.workers, shape.intra_op_threads, shape.inference_threading) == (workers, intra, "auto")
    # No oversubscription: the workers' inference threads fit the cores.
    assert shape.workers * shape.intra_op_threads <= cores
    assert shape.reasons and "usable core" in shape.describe()


def test_flags_win_over_the_choice():
    shape = choose(M, workers=3, intra_op=0, inference_threading="pool", max_concurrent=7, cores=2,
                   memory=8 * GiB, size=1)
    assert (shape.workers, shape.intra_op_threads, shape.inference_threading, shape.max_concurrent_requests) == \
        (3, 0, "pool", 7)


def test_default_flags_on_this_machine(repo, tmp_path):
    from hotserve.server.shape import usable_cores

    base, build = repo
    affine_version(base, 1, build)
    server = ServerProcess(["--model_name", "m", "--model_base_path", base], str(tmp_path / "log"))
    with server:
        server.wait_ready(timeout=60)
        doc = httpx.get(server.url + "/v1/models/m/metadata").json()["metadata"]
        assert doc["serving_shape"]["workers"] == min(usable_cores(), 4)
        assert "serving shape:" in server.log()
        r = httpx.post(server.url + "/v1/models/m:predict", json={"instances": [[0, 0, 0, 0]]})
        assert r.status_code == 200 and r.json()["predictions"] == [[1.0] * 4]
