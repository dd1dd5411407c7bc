"""The nginx configuration for a fleet, from the template shipped in this package."""

from __future__ import annotations

from importlib import resources

TEMPLATE = "nginx.conf.template"


def template() -> str:
    return resources.files("hotserve.cluster").joinpath(TEMPLATE).read_text()


def _servers(addresses: list[str]) -> str:
    if not addresses:
        raise ValueError("an nginx upstream needs at least one replica address (host:port)")
    for a in addresses:
        host, sep, port = a.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"replica address {a!r} is not host:port")
    return "\n".join(f"        server {a} max_fails=1 fail_timeout=2s;" for a in addresses)


def render(rest: list[str], grpc: list[str], rest_listen: str = "8501", grpc_listen: str = "8500",
           text: str | None = None) -> str:
    """The config with one upstream server per replica (host:port) and the listen addresses
    (a port, or address:port)."""
    text = template() if text is None else text
    return (text.replace("@REST_SERVERS@", _servers(rest)).replace("@GRPC_SERVERS@", _servers(grpc))
            .replace("@REST_LISTEN@", str(rest_listen)).replace("@GRPC_LISTEN@", str(grpc_listen)))


def from_members(members: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(REST host:port list, gRPC host:port list) of a fleet's live replicas."""
    rest, grpc = [], []
    for _, doc in sorted(members.items()):
        url = str(doc.get("rest", ""))
        if url.startswith("http://"):
            rest.append(url[len("http://"):].rstrip("/"))
        if doc.get("grpc"):
            grpc.append(str(doc["grpc"]))
    return rest, grpc
