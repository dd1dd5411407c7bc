"""Metrics that cover every worker, the metrics the issue lists, per-second live aggregates,
and one structured log line per event with a stable `event` field."""

import asyncio
import dataclasses
import io
import json
import logging
import os
import re

import httpx
import pytest

from conftest import affine_version, wait_for
from hotserve.observability import events, live, metrics
from hotserve.observability.logs import JsonFormatter
from hotserve.server.dashboard import TickMerger, local_feed

X = {"instances": [[1.0, 2.0, 3.0, 4.0]]}
DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "observability.md")


def _samples(text: str, name: str) -> list[tuple[dict, float]]:
    """(labels, value) of every sample of a metric in an exposition."""
    out = []
    for m in re.finditer(r"^" + re.escape(name) + r"\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out.append((labels, float(m.group(2))))
    return out


def _check_exposition(text: str) -> None:
    """Each metric's HELP/TYPE once, and all its samples right after them (Prometheus' rule)."""
    seen, current = set(), None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            current = line.split()[2]
            assert current not in seen, f"{current} declared twice"
            seen.add(current)
        elif line and not line.startswith("#"):
            name = re.match(r"[^{ ]+", line).group(0)
            assert re.sub(r"_(bucket|sum|count)$", "", name) == current or name == current, (name, current)


def test_one_scrape_covers_every_worker(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--num_workers", "2")
    sent = 0

    def both_workers_counted() -> bool:
        nonlocal sent
        for _ in range(10):  # a fresh connection each: SO_REUSEPORT spreads them over the workers
            with httpx.Client() as c:
                assert c.post(server.url + "/v1/models/m:predict", json=X).status_code == 200
            sent += 1
        text = httpx.get(server.url + "/metrics").text
        workers = {lab["worker"] for lab, v in _samples(text, ":tensorflow:serving:request_count") if v > 0}
        return workers == {"0", "1"}

    wait_for(both_workers_counted, 30, "requests on both workers")
    for path in ("/metrics", "/monitoring/prometheus/metrics"):
        text = httpx.get(server.url + path).text
        _check_exposition(text)
        counts = _samples(text, ":tensorflow:serving:request_count")
        assert sum(v for lab, v in counts if lab["status"] == "OK") == sent  # every request, whichever worker
        assert {lab["worker"] for lab, _ in counts} == {"0", "1"}
        latency = _samples(text, ":tensorflow:serving:request_latency_count")
        assert sum(v for _, v in latency) == sent
        assert {lab["worker"] for lab, _ in _samples(text, "hotserve_process_resident_memory_bytes")} == {"0", "1"}
        assert ({lab["state"]: v for lab, v in _samples(text, "hotserve_scrape_workers")}
                == {"answered": 2.0, "missing": 0.0})
        states = _samples(text, "hotserve_version_state")
        assert {lab["worker"] for lab, v in states if lab["state"] == "AVAILABLE" and v == 1} == {"0", "1"}


def test_the_listed_metrics_on_a_real_server(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--admin_token", "t")
    with httpx.Client() as c:
        for _ in range(3):
            assert c.post(server.url + "/v1/models/m:predict", json=X).status_code == 200
    affine_version(base, 2, build)
    # Version 1 is unloaded after it drained, a moment after the swap: wait on that event.
    r = httpx.get(server.url + "/v1/events", params={"kind": "unloaded", "wait": 20}, timeout=30).json()
    assert [e["version"] for e in r["events"]] == [1]
    text = server.get("/metrics")[1].decode()
    _check_exposition(text)
    # TF Serving's names and buckets (10 us x 1.8^i), per model and version.
    assert ':tensorflow:serving:request_latency_bucket{model_name="m",model_version="1",API="predict",entrypoint="REST",le="10"}' in text
    assert len([1 for lab, _ in _samples(text, ":tensorflow:serving:request_latency_bucket")
                if lab["model_version"] == "1"]) == 34
    # TensorFlow's SavedModel load metrics, for every version loaded.
    paths = {lab["model_path"] for lab, v in _samples(text, ":tensorflow:cc:saved_model:load_latency") if v > 0}
    assert paths == {os.path.join(base, "1"), os.path.join(base, "2")}
    assert (':tensorflow:cc:saved_model:load_attempt_count{model_path="%s",status="success"} 1'
            % os.path.join(base, "2")) in text
    assert 'hotserve_swaps_total{model="m"} 2' in text
    assert 'hotserve_route_weight_percent{model="m",version="2"} 100' in text
    assert 'hotserve_requests_in_flight{model="m",version="2"} 0' in text
    assert 'hotserve_request_queue_depth{model="m"} 0' in text
    assert 'hotserve_gate_results_total{model="m",gate="validation",outcome="passed"} 2' in text
    for kind in ("model_added", "load_start", "load_done", "swap", "retire", "unloaded"):
        assert _samples(text, "hotserve_events_total") and f'hotserve_events_total{{model="m",event="{kind}"}}' in text
    ops = {(lab["op"], lab["outcome"]) for lab, v in _samples(text, "hotserve_storage_operations_total") if v > 0}
    assert {("list_entries", "ok"), ("read_bytes", "ok"), ("stat_files", "ok")} <= ops, ops
    assert _samples(text, "hotserve_storage_operation_seconds_count")
    # A canary decision and a rollback are counted from their events.
    r = httpx.post(server.url + "/v1/admin/models/m/rollback", json={"to": 1}, headers={"Authorization": "Bearer t"},
                   timeout=60)
    assert r.status_code == 200, r.text
    text = server.get("/metrics")[1].decode()
    assert 'hotserve_rollbacks_total{model="m",reason="manual"} 1' in text
    assert 'hotserve_default_version{model="m"} 1' in text


def test_registry_merges_siblings_into_one_exposition():
    reg = metrics.Registry()
    c = reg.add(metrics.Counter("x_total", "x", ("model",)))
    h = reg.add(metrics.Histogram("lat", "l", ("model",), (1, 10)))
    c.inc(("m",), 2)
    h.observe(("m",), 5)
    sibling = reg.families('worker="1"')
    text = reg.render('worker="0"', [sibling]).decode()
    _check_exposition(text)
    assert 'x_total{model="m",worker="0"} 2' in text and 'x_total{model="m",worker="1"} 2' in text
    assert 'lat_bucket{model="m",le="10",worker="1"} 1' in text
    assert text.count("# TYPE lat histogram") == 1


def test_live_windows_summarize_and_merge_across_workers():
    samples = [0.001] * 98 + [0.010, -0.002]  # 100 requests, one failed
    s = live.summarize(samples)
    assert (s["n"], s["err"]) == (100, 1)
    assert s["p50"] == pytest.approx(1.0) and s["p99"] == pytest.approx(2.0)  # the 99th of 100 (nearest rank)
    merged = live.merge_series([s, live.summarize([0.004] * 100)])
    assert merged["n"] == 200 and merged["err"] == 1
    # From the merged log histograms: within the 5 % bucket width of the exact values
    # (98 x 1 ms, 2 ms, 100 x 4 ms, 10 ms: the 100th and the 198th are 4 ms).
    assert merged["p50"] == pytest.approx(4.0, rel=0.05) and merged["p99"] == pytest.approx(4.0, rel=0.05)
    # The request path's windows: recorded once, taken once per second, fresh lists after.
    live.WINDOWS.clear()
    metrics.record_request("lm", "7", "predict", "REST", "OK", 0.002)
    metrics.record_request("lm", "7", "infer", "GRPC", "INTERNAL", 0.003)
    taken = live._take()
    assert sorted(taken[("lm", "7")]) == [-0.003, 0.002]
    assert live._take() == {}


def test_tick_merger_waits_for_every_worker_then_adds_up():
    merger = TickMerger()
    t0 = {"t": 100, "worker": "0", "series": {"m/1": live.summarize([0.001] * 10)}, "rss": 1, "inflight": {"m/1": 2}}
    t1 = {"t": 100, "worker": "1", "series": {"m/1": live.summarize([0.003] * 30)}, "rss": 2, "inflight": {"m/1": 1}}
    merger.add(t0, now=0.0)
    assert merger.ready({"0", "1"}, now=0.1) == []  # worker 1's second not in yet
    merger.add(t1, now=0.2)
    [tick] = merger.ready({"0", "1"}, now=0.2)
    assert tick["series"]["m/1"]["n"] == 40 and tick["inflight"] == {"m/1": 3}
    assert set(tick["workers"]) == {"0", "1"}
    # A worker that does not report a second is left out after the merge wait.
    merger.add({**t0, "t": 101}, now=1.0)
    assert merger.ready({"0", "1"}, now=1.1) == []
    [late] = merger.ready({"0", "1"}, now=3.0)
    assert late["t"] == 101 and late["series"]["m/1"]["n"] == 10
    merger.add({**t1, "t": 101}, now=3.1)  # too late for a second already shown
    assert merger.ready({"0", "1"}, now=5.0) == []


def test_local_feed_backlog_then_live_events_in_order():
    bus = events.EventBus()
    ticker = live.Ticker()
    bus.publish(events.ModelAdded("m", "/x"))

    async def main():
        feed = local_feed(lambda: {"type": "state", "worker": "0"}, "0", 0, bus=bus, ticker=ticker)
        got = [await feed.__anext__() for _ in range(3)]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, bus.publish, events.Swapped("m", 1, (1,)))
        got.append(await asyncio.wait_for(feed.__anext__(), 5))
        ticker._emit(123, {("m", "1"): [0.001]})
        got.append(await asyncio.wait_for(feed.__anext__(), 5))
        await feed.aclose()
        return got

    hello, state, added, swap, tick = asyncio.run(main())
    assert hello["type"] == "hello" and state["type"] == "state"
    assert (added["kind"], swap["kind"], swap["seq"]) == ("model_added", "swap", 2)
    assert tick["type"] == "tick" and tick["series"]["m/1"]["n"] == 1


def _event_kinds() -> list[type]:
    return [cls for cls in vars(events).values()
            if isinstance(cls, type) and issubclass(cls, events.Event) and cls is not events.Event]


def test_every_event_kind_logs_one_json_line_with_its_event_field():
    bus = events.EventBus()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.events.json")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    events.subscribe_logging(bus, logger)
    kinds = _event_kinds()
    for cls in kinds:
        fields = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        fields["model"] = "m"
        bus.publish(cls(**fields))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [cls.kind for cls in kinds]
    assert all(line["model"] == "m" and line["msg"] and line["level"] for line in lines)
    assert len({cls.kind for cls in kinds}) == len(kinds), "event kinds must be unique"


def test_every_event_kind_is_documented():
    doc = open(DOCS).read()
    missing = [cls.kind for cls in _event_kinds() if f"`{cls.kind}`" not in doc]
    assert missing == [], f"docs/observability.md lacks event kinds {missing}"


def test_server_json_logs_carry_the_event_field(repo, start_server):
    base, build = repo
    affine_version(base, 1, build)
    server = start_server(base, "--log_format", "json")
    wait_for(lambda: '"event":"swap"' in server.log(), 10, "the swap's log line")
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    by_event = {line["event"]: line for line in lines if "event" in line}
    for kind in ("model_added", "version_state", "load_start", "gate", "load_done", "swap"):
        assert by_event[kind]["model"] == "m", kind
    assert by_event["load_done"]["version"] == 1
