"""The REST front end as a bare ASGI app.

No web framework: routing is a few string checks. Model requests go through the request frame
(server/frame.py), which runs everything CPU-bound for a predict (JSON parse, decode,
inference, encode) in one worker-thread hop, so the event loop only moves bytes.
"""

from __future__ import annotations

import logging

import orjson

from hotserve.errors import HotserveError, NotFound
from hotserve.observability import metrics
from hotserve.protocols import tfserving_rest as tfs
from hotserve.server.admin import AdminRoutes
from hotserve.server.asgi import JSON, Reply, error_reply
from hotserve.server.context import ServerContext
from hotserve.server.events_api import events_reply
from hotserve.server.rest_tfserving import PREFIX as V1_PREFIX
from hotserve.server.rest_tfserving import V1Routes
from hotserve.server.rest_v2 import V2Routes

log = logging.getLogger("hotserve.rest")

_VERSION_HEADER = b"x-model-version"
# TF Serving's Prometheus path, and the usual one.
_METRICS_PATHS = ("/monitoring/prometheus/metrics", "/metrics")


class RestApp:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.manager = ctx.manager
        self.v1 = V1Routes(ctx)
        self.v2 = V2Routes(ctx)
        self.admin = AdminRoutes(ctx)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            reply = await self._dispatch(scope, receive)
        except HotserveError as exc:
            reply = error_reply(exc)
        except Exception as exc:  # a bug must cost one request, never the worker
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            reply = Reply(500, tfs.encode_error(f"internal error: {type(exc).__name__}: {exc}"), code="INTERNAL")
        headers = reply.headers or [JSON]
        headers.append((b"content-length", str(len(reply.body)).encode()))
        if reply.version is not None:
            headers.append((_VERSION_HEADER, reply.version.encode()))
        if self.ctx.draining:
            # Shutting down: a balancer's kept-alive connection closes after this answer, so its
            # next request opens a new one (to another replica once this one stops accepting).
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _dispatch(self, scope, receive) -> Reply:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(V1_PREFIX):
            return await self.v1.dispatch(path[len(V1_PREFIX):], method, scope, receive)
        if path in _METRICS_PATHS:
            return Reply(200, metrics.render(), headers=[(b"content-type", b"text/plain; version=0.0.4")])
        if path.startswith("/v1/admin/"):
            return await self.admin.dispatch(path[len("/v1/admin/"):], method, scope, receive)
        if path == "/v1/events":
            return await events_reply(self.manager.bus, scope.get("query_string", b""))
        if path in ("/healthz", "/v2/health/live"):
            return Reply(200, b'{"live":true}')
        if path in ("/readyz", "/v2/health/ready"):
            return self._ready()
        if path == "/v2" or path.startswith("/v2/"):
            return await self.v2.dispatch(path, method, scope, receive)
        raise NotFound(
            f"no such endpoint: {method} {path}; the REST API serves /v1/models/<name>[/versions/<v>|/labels/<l>]"
            "[:predict|:classify|:regress|/metadata], /v2/... (KServe V2), /v1/admin/... (management), /healthz, /readyz,"
            " /metrics"
        )

    def _ready(self) -> Reply:
        models = {name: mm.is_ready() for name, mm in self.manager.models.items()}
        ready = self.ctx.ready()
        doc = {"ready": ready, "models": models, **({"draining": True} if self.ctx.draining else {})}
        return Reply(200 if ready else 503, orjson.dumps(doc))


async def _lifespan(receive, send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
