"""`hotserve fleet status`: the live replicas and, per model, what the fleet serves."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hotserve.cluster import zk
from hotserve.cluster.rollout import read_record
from hotserve.cluster.routing_store import ZkRoutingStore
from hotserve.cluster.view import FleetView
from hotserve.repository.routing_store import RoutingState


@dataclass
class FleetStatus:
    url: str
    members: dict[str, dict]
    routing: dict[str, RoutingState | None] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def state(st: RoutingState | None) -> dict | None:
            if st is None:
                return None
            return {"fleet_target": st.fleet_target, "prepare": list(st.prepare), "pinned": st.pinned,
                    "labels": st.labels, "canary_weight": st.canary_weight,
                    "keep": {str(v): t for v, t in st.keep.items()}}

        return {"fleet": self.url, "replicas": self.members,
                "models": {m: {"routing": state(st), "rollout": self.records.get(m, {})} for m, st in self.routing.items()}}


def read_status(client, address: zk.FleetAddress) -> FleetStatus:
    from kazoo.exceptions import NoNodeError

    members = FleetView(client, address).read()
    models = {m for doc in members.values() for m in doc.get("models", {})}
    try:
        from urllib.parse import unquote

        models |= {unquote(m) for m in zk.call(client.get_children_async(f"{address.root}/models"), what="list models")}
    except NoNodeError:
        pass
    status = FleetStatus(address.url, members)
    for m in sorted(models):
        status.routing[m] = ZkRoutingStore(client, address.routing(m)).read()[0]
        status.records[m] = read_record(client, address, m)[0]
    return status


def _versions(m: dict) -> str:
    """One replica's view of one model: serving, prepared, loading, failed."""
    serving = m.get("serving")
    routed = set(m.get("routed", []))
    states = {int(v): s for v, s in m.get("versions", {}).items()}
    prepared = sorted(v for v, s in states.items() if s == "AVAILABLE" and v not in routed)
    loading = sorted(v for v, s in states.items() if s in ("START", "LOADING"))
    revision = (m.get("revisions") or {}).get(str(serving))
    parts = [(f"serving {serving}" + (f" revision {revision}" if revision else "")) if serving is not None
             else "serving nothing"]
    if prepared:
        parts.append(f"prepared {','.join(map(str, prepared))}")
    if loading:
        parts.append(f"loading {','.join(map(str, loading))}")
    for v, error in sorted(m.get("failed", {}).items()):
        parts.append(f"FAILED {v}: {error[:80]}")
    return "; ".join(parts)


def format_status(status: FleetStatus, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"fleet {status.url}: {len(status.members)} live replica(s)"]
    for model, st in status.routing.items():
        record = status.records.get(model, {})
        if st is None or st.fleet_target is None:
            line = f"model {model}: no fleet version yet (the first replica to serve it sets one)"
        else:
            line = f"model {model}: fleet version {st.fleet_target}"
            kept = [f"{v} ({max(0.0, t - now):.0f}s left)" for v, t in sorted(st.keep.items()) if t > now]
            if kept:
                line += f"; kept loaded for an instant switch back: {', '.join(kept)}"
            if st.prepare:
                line += f"; preparing {list(st.prepare)}"
        if st is not None and st.pinned is not None:
            line += f"; PINNED fleet-wide to {st.pinned}"
        if st is not None and st.labels:
            line += f"; labels {dict(sorted(st.labels.items()))}"
        lines.append(line)
        last = record.get("last")
        if last:
            skew = f", skew {last['skew_ms']:.0f} ms" if last.get("skew_ms") is not None else ""
            kind = "rollback" if last.get("rollback") else "rollout"
            lines.append(f"  last {kind}: version {last.get('version')} {last.get('outcome')}{skew} "
                         f"({max(0.0, now - float(last.get('finished', now))):.0f}s ago, by {last.get('by', '?')})")
        if record.get("active"):
            a = record["active"]
            lines.append(f"  in progress: version {a.get('version')} ({a.get('phase')}, by {a.get('by', '?')})")
    if not status.members:
        return "\n".join(lines)
    rows = [("REPLICA", "READY", "REST", "GRPC", "IN-FLIGHT", "MODELS")]
    for rid, doc in sorted(status.members.items()):
        ready = "draining" if doc.get("draining") else ("yes" if doc.get("ready") else "no")
        models = "  ".join(f"{m}: {_versions(md)}" for m, md in sorted(doc.get("models", {}).items()))
        rows.append((rid, ready, str(doc.get("rest") or "(opens when ready)"), str(doc.get("grpc") or "-"),
                     str(doc.get("in_flight", 0)),
                     models or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return "\n".join(lines)
