"""ZooKeeper plumbing for a fleet: the --fleet URL, the client, the znode layout, bounded calls.

Layout under the URL's path (the fleet's root):

    <root>/members/<replica id>     ephemeral: one per live replica (cluster/member.py)
    <root>/models/<model>/routing   the model's routing intent (cluster/routing_store.py)
    <root>/models/<model>/rollout   the last rollout, the fleet's version history (cluster/rollout.py)
    <root>/locks/<model>            one rollout of a model at a time (kazoo's Lock recipe)
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from hotserve.repository.storage import StorageUnavailable

SCHEME = "zk"
# A session outlives a ZooKeeper blip this long; after it, the replica's znode is gone until
# it reconnects and registers again (it keeps serving throughout).
SESSION_TIMEOUT_SECONDS = 10.0
# Every call waits at most this long, so an unreachable ZooKeeper never blocks a caller for good.
OP_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 30.0

_HOST = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:\d{1,5}$|^[A-Za-z0-9._\-]+$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._\-]+$")


class FleetUnavailable(StorageUnavailable):
    """ZooKeeper cannot be reached (or did not answer in time)."""


@dataclass(frozen=True)
class FleetAddress:
    hosts: str  # kazoo's connection string: "h1:2181,h2:2181"
    root: str  # "/hotserve/prod"

    @property
    def url(self) -> str:
        return f"{SCHEME}://{self.hosts}{self.root}"

    @classmethod
    def parse(cls, url: str) -> "FleetAddress":
        """zk://host:port[,host:port...]/path; ValueError saying what is wrong otherwise."""
        expected = "expected zk://host:port[,host:port...]/path, e.g. zk://127.0.0.1:2181/hotserve/prod"
        parts = urlsplit(url)
        if parts.scheme != SCHEME:
            raise ValueError(f"--fleet {url!r}: the scheme must be zk://; {expected}")
        hosts = [h for h in parts.netloc.split(",")]
        if not parts.netloc or not all(h and _HOST.match(h) for h in hosts):
            raise ValueError(f"--fleet {url!r}: no usable ZooKeeper host list; {expected}")
        for h in hosts:
            port = h.rpartition(":")[2] if ":" in h else None
            if port is not None and port.isdigit() and not 0 < int(port) < 65536:
                raise ValueError(f"--fleet {url!r}: port {port} is out of range; {expected}")
        segments = [s for s in parts.path.split("/") if s]
        if not segments or not all(_SEGMENT.match(s) for s in segments) or parts.query or parts.fragment:
            raise ValueError(f"--fleet {url!r}: the path names the fleet (letters, digits, '.', '_', '-' "
                             f"between slashes); {expected}")
        return cls(",".join(hosts), "/" + "/".join(segments))

    # -- znode paths ---------------------------------------------------------------------------
    @property
    def members(self) -> str:
        return f"{self.root}/members"

    def member(self, replica_id: str) -> str:
        return f"{self.members}/{_name(replica_id)}"

    def model(self, model: str) -> str:
        return f"{self.root}/models/{_name(model)}"

    def routing(self, model: str) -> str:
        return self.model(model) + "/routing"

    def record(self, model: str) -> str:
        return self.model(model) + "/rollout"

    def lock(self, model: str) -> str:
        return f"{self.root}/locks/{_name(model)}"


def _name(text: str) -> str:
    """A znode name for a model or replica id ('/' and friends escaped)."""
    out = quote(text, safe="._-:@")
    return out if out not in (".", "..", "") else quote(out, safe="")


def connect(address: FleetAddress, timeout: float = CONNECT_TIMEOUT_SECONDS):
    """A started KazooClient; FleetUnavailable if ZooKeeper is not reached within timeout.

    Reconnects forever (backing off to 2 s between attempts), so a ZooKeeper outage ends
    without a restart; each command retries briefly, then fails (callers bound every call)."""
    try:
        from kazoo.client import KazooClient
        from kazoo.retry import KazooRetry
    except ImportError:  # pragma: no cover - the fleet extra is missing
        raise FleetUnavailable("--fleet needs kazoo: pip install -c constraints.txt -e '.[fleet]'") from None
    logging.getLogger("kazoo").setLevel(logging.ERROR)  # connection drops are our own FleetMembership events
    client = KazooClient(
        hosts=address.hosts, timeout=SESSION_TIMEOUT_SECONDS,
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=2.0),
        command_retry=KazooRetry(max_tries=3, delay=0.05, backoff=2, max_delay=0.5),
    )
    client.start_async().wait(timeout)
    if not client.connected:
        client.stop()
        client.close()
        raise FleetUnavailable(f"cannot reach ZooKeeper at {address.hosts} within {timeout:g}s")
    return client


def close(client) -> None:
    try:
        client.stop()
        client.close()
    except Exception:  # closing a client that lost its connection may raise; nothing to keep
        pass


def call(async_result, timeout: float = OP_TIMEOUT_SECONDS, what: str = "ZooKeeper call") -> Any:
    """The result of a kazoo *_async call, bounded; connection trouble becomes FleetUnavailable
    (NoNodeError, NodeExistsError, BadVersionError pass through: they are answers)."""
    from kazoo.exceptions import ConnectionLoss, OperationTimeoutError, SessionExpiredError
    from kazoo.handlers.threading import KazooTimeoutError

    try:
        return async_result.get(timeout=timeout)
    except (KazooTimeoutError, OperationTimeoutError):
        raise FleetUnavailable(f"{what}: ZooKeeper did not answer within {timeout:g}s") from None
    except (ConnectionLoss, SessionExpiredError) as exc:
        raise FleetUnavailable(f"{what}: ZooKeeper connection lost ({type(exc).__name__})") from None


def read_json(client, path: str, timeout: float = OP_TIMEOUT_SECONDS) -> tuple[dict | None, Any]:
    """(document or None when the node is missing or empty, stat or None)."""
    from kazoo.exceptions import NoNodeError

    try:
        data, stat = call(client.get_async(path), timeout, f"read {path}")
    except NoNodeError:
        return None, None
    if not data:
        return None, stat
    try:
        doc = json.loads(data)
    except ValueError:
        return None, stat
    return (doc if isinstance(doc, dict) else None), stat


def dumps(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
