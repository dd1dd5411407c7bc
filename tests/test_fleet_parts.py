"""The fleet's parts one by one: the ZooKeeper routing store against a real ZooKeeper (compare-
and-set on the znode version, watches, unreachable), the replica report folded from events,
the --fleet URL, the nginx config (rendered, and checked by nginx itself), the rollout's
reading of a member, the status table."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid

import pytest

from fleet_support import needs_nginx, zookeeper  # noqa: F401
from hotserve.cluster import nginx, zk
from hotserve.cluster.report import ReplicaReport
from hotserve.cluster.rollout import member_state
from hotserve.cluster.routing_store import ZkRoutingStore
from hotserve.cluster.status import FleetStatus, format_status
from hotserve.observability.events import (EventBus, ModelAdded, ModelRemoved, Notice, Swapped, VersionForgotten,
                                            VersionStateChanged)
from hotserve.repository.routing_store import RoutingState, decode_state, encode_state, update

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def client(zookeeper):
    c = zk.connect(zk.FleetAddress.parse(zookeeper.url("x")), timeout=10)
    yield c
    zk.close(c)


def test_zk_routing_store_compare_and_set_and_watch(client):
    path = f"/hotserve/unit-{uuid.uuid4().hex[:8]}/models/m/routing"
    store, other = ZkRoutingStore(client, path), ZkRoutingStore(client, path)
    assert store.read() == (None, 0)
    assert store.compare_and_set(RoutingState(labels={"a": 1}), 0) == 1
    assert store.compare_and_set(RoutingState(labels={"a": 2}), 0) is None  # created meanwhile: refused
    assert store.compare_and_set(RoutingState(labels={"a": 2}), 7) is None  # stale revision: refused
    state, rev = update(store, lambda st: st.with_changes(pinned=3, fleet_target=1, prepare=(2,), keep={1: 5.0}))
    assert rev == 2 and store.read() == (state, 2)
    assert state.labels == {"a": 1} and state.fleet_target == 1 and state.prepare == (2,) and state.keep == {1: 5.0}
    changed = threading.Event()
    other.read()
    other.watch(changed.set)
    assert not changed.wait(0.3)  # registering the watch is not a change
    update(store, lambda st: st.with_changes(fleet_target=2))
    assert changed.wait(10), "the other store's watch did not fire"
    assert other.read()[0].fleet_target == 2
    other.poll()  # a no-op: ZooKeeper pushes
    other.close()
    store.close()


def test_zk_routing_store_unreachable_raises_storage_unavailable(zookeeper):
    from hotserve.repository.storage import StorageUnavailable

    c = zk.connect(zk.FleetAddress.parse(zookeeper.url("x")), timeout=10)
    store = ZkRoutingStore(c, "/hotserve/closed/models/m/routing", op_timeout=1.0)
    zk.close(c)
    with pytest.raises(StorageUnavailable):
        store.read()
    with pytest.raises(StorageUnavailable):
        store.compare_and_set(RoutingState(), 0)


def test_routing_state_round_trips_fleet_fields_and_reads_old_documents():
    st = RoutingState(labels={"s": 1}, fleet_target=4, prepare=(5, 6), keep={3: 123.5})
    assert decode_state(encode_state(st, 9)) == (st, 9)
    old, rev = decode_state(b'{"revision": 2, "labels": {"a": 1}}')  # written before fleets existed
    assert rev == 2 and old.fleet_target is None and old.prepare == () and old.keep == {}


def test_fleet_address_parsing():
    a = zk.FleetAddress.parse("zk://10.0.0.1:2181,10.0.0.2:2181/hotserve/prod")
    assert a.hosts == "10.0.0.1:2181,10.0.0.2:2181" and a.root == "/hotserve/prod"
    assert a.routing("m") == "/hotserve/prod/models/m/routing" and a.member("r/1") == "/hotserve/prod/members/r%2F1"
    for bad, why in [("http://h:1/a", "scheme"), ("zk://h:1", "path"), ("zk:///a", "host"), ("zk://h:70000/a", "range"),
                     ("zk://h:1/a b", "path")]:
        with pytest.raises(ValueError, match=why):
            zk.FleetAddress.parse(bad)


def test_serve_rejects_a_bad_fleet_url_before_starting(capsys):
    from hotserve.cli import main

    assert main(["serve", "--model_base_path", "/nonexistent", "--fleet", "zk://h:2181"]) == 2
    assert "the path names the fleet" in capsys.readouterr().err
    assert main(["serve", "--model_base_path", "/nonexistent", "--fleet_auto_rollout"]) == 2
    assert "needs --fleet" in capsys.readouterr().err


def test_replica_report_folds_events():
    bus, report = EventBus(), ReplicaReport()
    bus.subscribe(report.apply)
    bus.publish(ModelAdded("m", "/x"))
    for state in ("START", "LOADING", "AVAILABLE"):
        bus.publish(VersionStateChanged("m", 1, state))
    bus.publish(Swapped("m", 1, (1,), {"gold": 1}))
    bus.publish(VersionStateChanged("m", 2, "START"))
    bus.publish(VersionStateChanged("m", 2, "END", "DATA_LOSS", "sha256 mismatch"))
    bus.publish(Notice("m", None, "x", "not a report event"))
    doc = report.doc()["m"]
    assert doc["serving"] == 1 and doc["serving_since"] is not None and doc["routed"] == [1]
    assert doc["versions"] == {"1": "AVAILABLE", "2": "END"} and doc["failed"] == {"2": "sha256 mismatch"}
    assert doc["labels"] == {"gold": 1}
    since = doc["serving_since"]
    bus.publish(Swapped("m", 1, (1, 3), {}))
    assert report.doc()["m"]["serving_since"] == since  # same default: the time it started serving stays
    bus.publish(VersionStateChanged("m", 2, "START"))  # its directory changed: tried again
    assert report.doc()["m"]["failed"] == {}
    bus.publish(VersionForgotten("m", 2))
    assert "2" not in report.doc()["m"]["versions"]
    bus.publish(ModelRemoved("m"))
    assert report.doc() == {}


def test_member_state_reads_one_version():
    doc = {"models": {"m": {"versions": {"2": "AVAILABLE", "3": "LOADING", "4": "END"}, "failed": {"4": "boom"}}}}
    assert member_state(doc, "m", 2)[0] == "ready"
    assert member_state(doc, "m", 3) == ("pending", "version 3 is LOADING")
    assert member_state(doc, "m", 4) == ("failed", "boom")
    assert member_state(doc, "m", 5)[0] == "pending"
    assert member_state(doc, "other", 2)[0] == "absent"
    assert member_state({**doc, "draining": True}, "m", 2)[0] == "draining"


def test_status_table():
    st = FleetStatus("zk://h:1/f", {"r0": {"id": "r0", "ready": True, "rest": "http://a:1", "grpc": "a:2", "in_flight": 3,
                                          "models": {"m": {"serving": 2, "routed": [2], "versions": {"2": "AVAILABLE",
                                                                                                     "3": "AVAILABLE",
                                                                                                     "4": "END"},
                                                           "failed": {"4": "corrupt"}}}}},
                     routing={"m": RoutingState(fleet_target=2, keep={1: 1060.0})},
                     records={"m": {"last": {"version": 2, "outcome": "done", "skew_ms": 12.0, "finished": 990.0,
                                             "by": "cli"}}})
    out = format_status(st, now=1000.0)
    assert "model m: fleet version 2; kept loaded for an instant switch back: 1 (60s left)" in out
    assert "last rollout: version 2 done, skew 12 ms (10s ago, by cli)" in out
    assert "r0       yes    http://a:1  a:2   3          m: serving 2; prepared 3; FAILED 4: corrupt" in out


def test_nginx_config_renders_and_the_shipped_example_is_current():
    rest = ["10.0.0.1:8501", "10.0.0.2:8501", "10.0.0.3:8501"]
    grpc = ["10.0.0.1:8500", "10.0.0.2:8500", "10.0.0.3:8500"]
    text = nginx.render(rest, grpc)
    assert "server 10.0.0.2:8501 max_fails=1 fail_timeout=2s;" in text and "grpc_pass grpc://hotserve_grpc;" in text
    assert "@" not in text.replace("@REST", "").split("#", 1)[0]
    with open(os.path.join(REPO, "deploy", "nginx", "nginx.conf")) as f:
        assert f.read() == text, "deploy/nginx/nginx.conf is stale: hotserve fleet nginx-config --rest ... --grpc ..."
    for bad in ([], ["nohost"], ["h:port"]):
        with pytest.raises(ValueError):
            nginx.render(bad, grpc)
    assert nginx.from_members({"b": {"rest": "http://h2:1", "grpc": "h2:2"}, "a": {"rest": "http://h1:1", "grpc": "h1:2"}}) \
        == (["h1:1", "h2:1"], ["h1:2", "h2:2"])


@needs_nginx
def test_nginx_accepts_the_shipped_config(tmp_path):
    conf = os.path.join(REPO, "deploy", "nginx", "nginx.conf")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "logs").mkdir()
    p = subprocess.run(["nginx", "-t", "-c", conf, "-p", str(tmp_path), "-e", str(tmp_path / "logs" / "e.log"),
                        "-g", f"pid {tmp_path}/nginx.pid;"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
