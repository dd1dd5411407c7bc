"""The REST front end: one handler for the HTTP server (server/http.py).

No web framework: routing is a few string checks. Model requests go through the request frame
(server/frame.py), which runs everything CPU-bound for a predict (JSON parse, decode,
inference, encode) in one worker-thread hop, so the event loop only moves bytes.
"""

from __future__ import annotations

import logging

import orjson

from hotserve.errors import HotserveError, NotFound
from hotserve.observability import metrics, tracing
from hotserve.protocols import tfserving_rest as tfs
from hotserve.server import openapi
from hotserve.server.admin import AdminRoutes
from hotserve.server.context import ServerContext
from hotserve.server.dashboard import DashboardRoutes
from hotserve.server.events_api import events_reply
from hotserve.server.http import Request, Response
from hotserve.server.instrument import worker_state
from hotserve.server.reply import JSON, Reply, error_reply
from hotserve.server.rest_tfserving import PREFIX as V1_PREFIX
from hotserve.server.rest_tfserving import V1Routes
from hotserve.server.rest_learning import LearningRoutes, is_learning_path
from hotserve.server.rest_parameters import ParameterRoutes, is_parameters_path
from hotserve.server.rest_v2 import V2Routes

log = logging.getLogger("hotserve.rest")

_VERSION_HEADER = b"x-model-version"
_REVISION_HEADER = b"x-model-revision"
# TF Serving's Prometheus path, and the usual one.
_METRICS_PATHS = ("/monitoring/prometheus/metrics", "/metrics")
_METRICS_TYPE = (b"content-type", b"text/plain; version=0.0.4")
_V2_MODELS = "/v2/models/"


class RestApp:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.manager = ctx.manager
        self.v1 = V1Routes(ctx)
        self.v2 = V2Routes(ctx)
        self.admin = AdminRoutes(ctx)
        self.learning = LearningRoutes(ctx)
        self.parameters = ParameterRoutes(ctx)
        self.dashboard = DashboardRoutes(lambda: worker_state(ctx.manager, ctx.worker), ctx.worker, ctx.peers)

    def close(self) -> None:
        """Shutdown: end the open dashboard streams so their connections can close."""
        self.dashboard.close()

    def fast(self, request: Request) -> Response | None:
        """The answer to a model request that runs inline (a cheap model, a small request),
        computed synchronously: the HTTP layer then writes it without scheduling a task. None
        for everything else, which takes the async path."""
        if request.method != "POST" or tracing.ENABLED:
            return None
        path = request.path
        try:
            if path.startswith(V1_PREFIX) and path.endswith(":predict"):
                name = path[len(V1_PREFIX):-len(":predict")]
                reply = self.v1.inline(name, request) if "/" not in name else None
            elif path.startswith(_V2_MODELS) and path.endswith("/infer"):
                name = path[len(_V2_MODELS):-len("/infer")]
                reply = self.v2.inline(name, request) if "/" not in name else None
            else:
                return None
        except HotserveError as exc:
            reply = error_reply(exc)
        except Exception as exc:  # a bug must cost one request, never the connection
            log.exception("unhandled error on %s %s", request.method, path)
            reply = Reply(500, tfs.encode_error(f"internal error: {type(exc).__name__}: {exc}"), code="INTERNAL")
        return None if reply is None else self._response(reply)

    def _response(self, reply: Reply) -> Response:
        headers = reply.headers or [JSON]
        if reply.version is not None:
            headers.append((_VERSION_HEADER, reply.version.encode()))
            if reply.revision is not None:
                headers.append((_REVISION_HEADER, reply.revision.encode()))
        # Shutting down: a balancer's kept-alive connection closes after this answer, so its next
        # request opens a new one (to another replica once this one stops accepting).
        return Response(reply.status, headers, reply.body, reply.stream, close=self.ctx.draining)

    async def __call__(self, request: Request) -> Response:
        if tracing.ENABLED:
            tracing.set_incoming({k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers
                                  if k in (b"traceparent", b"tracestate")})
        try:
            reply = await self._dispatch(request)
        except HotserveError as exc:
            reply = error_reply(exc)
        except Exception as exc:  # a bug must cost one request, never the worker
            log.exception("unhandled error on %s %s", request.method, request.path)
            reply = Reply(500, tfs.encode_error(f"internal error: {type(exc).__name__}: {exc}"), code="INTERNAL")
        return self._response(reply)

    async def _dispatch(self, request: Request) -> Reply:
        path = request.path
        if is_learning_path(path):
            return await self.learning.dispatch(path, request)
        if is_parameters_path(path):
            return await self.parameters.dispatch(path, request)
        if path.startswith(V1_PREFIX):
            return await self.v1.dispatch(path[len(V1_PREFIX):], request)
        if path in _METRICS_PATHS:
            body = await self.ctx.peers.render_metrics() if self.ctx.peers is not None else metrics.render()
            return Reply(200, body, headers=[_METRICS_TYPE])
        if path.startswith("/dashboard"):
            return await self.dashboard.handle(request)
        if path.startswith("/v1/admin/"):
            return await self.admin.dispatch(path[len("/v1/admin/"):], request)
        if path == "/openapi.json":
            return Reply(200, openapi.document_bytes())
        if path == "/v1/events":
            return await events_reply(self.manager.bus, request.query, str(self.ctx.worker))
        if path in ("/healthz", "/v2/health/live"):
            return self._live()
        if path in ("/readyz", "/v2/health/ready"):
            return self._ready()
        if path == "/v2" or path.startswith("/v2/"):
            return await self.v2.dispatch(path, request)
        raise NotFound(
            f"no such endpoint: {request.method} {path[:200]}; the REST API serves "
            "/v1/models/<name>[/versions/<v>|/labels/<l>][:predict|:classify|:regress|/metadata], /v2/... (KServe V2), "
            "/v1/admin/... (management), /v1/events, /healthz, /readyz, /metrics, /dashboard"
        )

    def _ready(self) -> Reply:
        """200 once every model has an available version, none is degraded (its calls hang), and
        the server is not draining (SIGTERM)."""
        degraded = self.ctx.frame.lanes.degraded()
        models = {name: mm.is_ready() and name not in degraded for name, mm in self.manager.models.items()}
        ready = self.ctx.ready()
        doc = {"ready": ready, "models": models, **({"draining": True} if self.ctx.draining else {})}
        if degraded:
            doc["degraded"] = degraded
        return Reply(200 if ready else 503, orjson.dumps(doc))

    def _live(self) -> Reply:
        """200 while the server can serve; 503 once a model has been degraded so long that only a
        restart gets its hung threads back (AdmissionOptions.wedged_seconds)."""
        wedged = self.ctx.frame.lanes.wedged()
        if wedged:
            return Reply(503, orjson.dumps({"live": False, "wedged": wedged}), code="UNAVAILABLE")
        return Reply(200, b'{"live":true}')
