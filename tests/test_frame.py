"""The request frame in process, with a fake servable: bind, run, release, record, and the
error mapping every front end shares (errors name the bound version)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from hotserve.core.config import ModelConfig
from hotserve.core.loaded import LoadedVersion
from hotserve.core.router import Route, RouteTable
from hotserve.errors import Code, InvalidArgument
from hotserve.observability import metrics
from hotserve.server.frame import Call, RequestFrame


class FakeServable:
    runtime = "python"
    signatures: dict = {}

    def predict(self, inputs, signature_name="serving_default"):
        return {}

    def unload(self) -> None:
        pass


class FakeModel:
    def __init__(self, name: str, lv: LoadedVersion, inline: bool = False) -> None:
        self.route = Route(name)
        self.route.table = RouteTable({lv.version: lv}, lv)
        self.inline = inline
        self.config = ModelConfig(name, "/nowhere")
        self.batcher = None

    def runs_inline(self, size: int) -> bool:
        return self.inline


class FakeManager:
    def __init__(self, **models: FakeModel) -> None:
        self.models = models

    def acquire(self, name, version=None, label=None, key=None):
        return self.models[name].route.acquire(version, label, key)


@pytest.fixture
def frame():
    lv = LoadedVersion("fm", 7, FakeServable())
    pool = ThreadPoolExecutor(2)
    f = RequestFrame(FakeManager(fm=FakeModel("fm", lv)), pool)
    yield f, lv
    pool.shutdown(wait=True)


def _count(model: str, version: str, status: str) -> float:
    return metrics.REQUEST_COUNT.value((model, version, "predict", "REST", status))


def test_success_names_the_version_and_releases(frame):
    f, lv = frame
    seen = []
    f.observers.append(lambda call, bound, prepared, value: seen.append((bound.version, prepared, value)))
    before = _count("fm", "7", "OK")
    done = asyncio.run(f.run(Call("fm"), lambda: "parsed", lambda bound, p: (bound.version, p)))
    assert done.error is None and done.value == (7, "parsed") and done.version == "7"
    assert seen == [(7, "parsed", (7, "parsed"))]
    assert lv.in_flight == 0
    assert _count("fm", "7", "OK") == before + 1


def test_parse_errors_name_no_version(frame):
    f, lv = frame

    def bad():
        raise InvalidArgument("expected a JSON object")

    done = f.run_sync(Call("fm"), bad, lambda bound, p: None)
    assert done.error.code is Code.INVALID_ARGUMENT and done.version is None and lv.in_flight == 0


def test_model_errors_are_internal_and_name_the_version(frame):
    f, lv = frame
    before = _count("fm", "7", "INTERNAL")

    def broken(bound, p):
        raise ValueError("a model bug")

    done = f.run_sync(Call("fm"), lambda: None, broken)
    assert done.error.code is Code.INTERNAL and done.version == "7"
    assert "model fm version 7" in done.error.message and "ValueError: a model bug" in done.error.message
    assert lv.in_flight == 0
    assert _count("fm", "7", "INTERNAL") == before + 1


def test_unknown_version_is_not_found(frame):
    f, _ = frame
    done = f.run_sync(Call("fm", version=3), lambda: None, lambda bound, p: None)
    assert done.error.code is Code.NOT_FOUND and done.version is None


def test_timeout_answers_once_with_the_bound_version(frame):
    f, lv = frame
    release = threading.Event()
    before = _count("fm", "7", "DEADLINE_EXCEEDED"), _count("fm", "7", "OK")

    def slow(bound, p):
        release.wait(10)
        return "late"

    done = asyncio.run(f.run(Call("fm"), lambda: None, slow, timeout=0.05, timeout_flag="--rest_api_timeout_in_ms"))
    assert done.error.code is Code.DEADLINE_EXCEEDED and done.version == "7"
    assert "(--rest_api_timeout_in_ms)" in done.error.message
    assert lv.in_flight == 1  # still running on its version
    release.set()
    f.lanes.get("fm").executor.shutdown(wait=True)
    assert lv.in_flight == 0
    # Counted once, as the timeout the client saw.
    assert (_count("fm", "7", "DEADLINE_EXCEEDED"), _count("fm", "7", "OK")) == (before[0] + 1, before[1])


def test_inline_runs_on_the_calling_thread():
    lv = LoadedVersion("fi", 1, FakeServable())
    pool = ThreadPoolExecutor(1)
    f = RequestFrame(FakeManager(fi=FakeModel("fi", lv, inline=True)), pool)
    here = threading.get_ident()
    done = asyncio.run(f.run(Call("fi"), lambda: None, lambda bound, p: threading.get_ident()))
    assert done.value == here
    pool.shutdown()


def test_admission_refuses_beyond_the_queue_and_degrades_on_hangs():
    """A hung model fills only its own lane: beyond its threads + queue it is refused at once
    (429), once every thread hangs it is degraded (503), and it recovers when its calls return."""
    from hotserve.server.admission import AdmissionOptions

    lv = LoadedVersion("hung", 1, FakeServable())
    ok = LoadedVersion("fine", 1, FakeServable())
    pool = ThreadPoolExecutor(1)
    f = RequestFrame(FakeManager(hung=FakeModel("hung", lv), fine=FakeModel("fine", ok)), pool,
                     AdmissionOptions(max_concurrent_requests=2, max_queued_requests=1))
    gate = threading.Event()

    def hang(bound, p):
        gate.wait(10)
        return "late"

    async def scenario():
        calls = [asyncio.create_task(f.run(Call("hung"), lambda: None, hang, timeout=0.2)) for _ in range(3)]
        await asyncio.sleep(0.05)  # let the three be admitted (2 running, 1 queued)
        refused = await f.run(Call("hung"), lambda: None, hang, timeout=0.2)
        assert refused.error.code is Code.RESOURCE_EXHAUSTED and "at capacity" in refused.error.message
        assert refused.error.retry_after >= 1
        timed_out = await asyncio.gather(*calls)
        assert all(d.error.code is Code.DEADLINE_EXCEEDED for d in timed_out)
        lane = f.lanes.get("hung")
        assert lane.abandoned == 3 and lane.degraded_since is not None  # 2 hung threads + 1 never started
        degraded = await f.run(Call("hung"), lambda: None, hang, timeout=0.2)
        assert degraded.error.code is Code.UNAVAILABLE and "degraded" in degraded.error.message
        assert "hung" in f.lanes.degraded()
        # Another model is untouched.
        fine = await f.run(Call("fine"), lambda: None, lambda bound, p: "ok", timeout=1.0)
        assert fine.value == "ok"
        gate.set()
        for _ in range(200):
            if lane.degraded_since is None:
                break
            await asyncio.sleep(0.01)
        assert lane.degraded_since is None and lane.abandoned == 0
        again = await f.run(Call("hung"), lambda: None, lambda bound, p: "back", timeout=1.0)
        assert again.value == "back"

    asyncio.run(scenario())
    f.lanes.shutdown()
    pool.shutdown()


def test_inline_weight_counts_raw_tensor_bytes_a_quarter():
    """JSON text costs the loop about twice to four times what raw tensor bytes do per byte
    (core/inline.py): a batch of 32 x 784 float32 in V2's binary extension (100 KB) runs inline,
    the same batch as JSON (about 200 KB) does not, nor does 33 KiB of JSON."""
    from hotserve.core import inline
    from hotserve.server.http import Request
    from hotserve.server.rest_v2 import _weight

    raw = 32 * 784 * 4
    assert inline.request_weight(200, raw) <= inline.MAX_WEIGHT
    assert inline.request_weight(33 * 1024) > inline.MAX_WEIGHT
    assert inline.request_weight(0, 4 * inline.MAX_WEIGHT + 4) > inline.MAX_WEIGHT

    def req(body: bytes, *headers: tuple[bytes, bytes]) -> Request:
        return Request("POST", "/v2/models/m/infer", b"", list(headers), body, True)

    json_part = b'{"inputs":[]}'
    body = json_part + bytes(raw)
    assert _weight(req(body, (b"inference-header-content-length", str(len(json_part)).encode()))) == \
        len(json_part) + raw // 4
    assert _weight(req(body)) == len(body)  # no binary header: all of it is JSON text
    assert _weight(req(body, (b"inference-header-content-length", b"x"))) == len(body)  # prepare() answers the 400
    assert _weight(req(body, (b"inference-header-content-length", str(len(json_part)).encode()),
                       (b"content-encoding", b"gzip"))) == len(body)


def test_made_request_ids_are_unique_and_in_order():
    """Ids the server makes are 32 hex digits, unique, in order within a process (the prediction
    log's join index grows at its end), and a forked worker makes other ones."""
    import os

    from hotserve.server.frame import new_request_id

    ids = [new_request_id() for _ in range(2000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then out without the parent's cleanup
        os.write(w, new_request_id().encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child[:16] != ids[0][:16] and child not in ids


def test_made_request_ids_stay_unique_across_threads():
    """Ids are made a block at a time; threads that run out at once take different blocks, so
    no id is handed out twice however the threads interleave."""
    from concurrent.futures import ThreadPoolExecutor

    from hotserve.server.frame import new_request_id

    def many(_: int) -> list[str]:
        return [new_request_id() for _ in range(20_000)]

    with ThreadPoolExecutor(4) as pool:
        made = [i for ids in pool.map(many, range(4)) for i in ids]
    assert len(set(made)) == len(made) == 80_000
