"""A fleet when ZooKeeper goes away (replicas keep serving what they serve, and do not drift
apart), and a fleet that rolls out new versions by itself (--fleet_auto_rollout)."""

from __future__ import annotations

import pytest

from conftest import wait_for
from fleet_support import Fleet, events, needs_zookeeper, wait_event, zookeeper  # noqa: F401
from hotserve.cluster.local import LocalZooKeeper

pytestmark = [pytest.mark.e2e, needs_zookeeper]


def test_zookeeper_unreachable_replicas_keep_serving_and_recover(tmp_path):
    own = LocalZooKeeper(str(tmp_path / "zk")).start()
    fleet = Fleet(own, str(tmp_path), n=2, shared_repo=True)
    try:
        fleet.publish()
        fleet.start()
        assert fleet.serving() == [1, 1]
        seqs = [events(r)[1] for r in fleet.replicas]
        own.stop()
        for server, seq in zip(fleet.replicas, seqs):
            wait_event(server, lambda ev: ev["state"] == "suspended", "fleet", seq)
        # Serving goes on, readiness too; a new version is prepared but nobody can flip to it.
        new = fleet.publish()
        fleet.wait_prepared(new)
        for server in fleet.replicas:
            for _ in range(5):
                assert fleet.answer(server.url) == 1
            assert server.get("/readyz")[0] == 200
        own.start()
        wait_for(lambda: "2 live replica(s)" in fleet.status(), 30, "both replicas registered again")
        code, result = fleet.rollout("--version", str(new))
        assert code == 0, result
        # The restarted ZooKeeper may still expire a session from before the outage: that
        # replica's member znode goes, the rollout does not wait for a replica out of the fleet,
        # and the replica converges to the fleet's version as it registers again (rollout.py).
        wait_for(lambda: fleet.serving() == [new, new], 30, f"both replicas serving version {new}")
    finally:
        fleet.stop()
        own.stop()


def test_auto_rollout_rolls_out_a_new_version_in_two_phases(zookeeper, tmp_path):
    fleet = Fleet(zookeeper, str(tmp_path), n=2, shared_repo=True, flags=("--fleet_auto_rollout",))
    try:
        fleet.publish()
        fleet.start()
        seqs = [events(r)[1] for r in fleet.replicas]
        new = fleet.publish()
        for server, seq in zip(fleet.replicas, seqs):
            wait_event(server, lambda ev: ev["default"] == new, "swap", seq, timeout=60)
        assert fleet.serving() == [new, new]
        out = fleet.status()
        assert f"last rollout: version {new} done" in out and "(auto)" in out, out
        # The flip happened once per replica: no replica served the new version before the fleet did.
        for server, seq in zip(fleet.replicas, seqs):
            swaps, _ = events(server, seq, "swap")
            assert [s["default"] for s in swaps] == [new], swaps
    finally:
        fleet.stop()
