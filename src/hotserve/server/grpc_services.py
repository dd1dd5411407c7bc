"""Every gRPC service hotserve serves, as transport-free method tables (server/grpc_handlers.py):
TF Serving's PredictionService and ModelService, KServe V2's GRPCInferenceService, and
grpc.health.v1."""

from __future__ import annotations

import asyncio
from typing import Callable

from hotserve.core.manager import Manager
from hotserve.errors import NotFound
from hotserve.server import grpc_tfserving, grpc_v2
from hotserve.server.context import ServerContext
from hotserve.server.grpc_handlers import Method, stream, unary


class Health:
    """grpc.health.v1 answered from live state: '' is the server's readiness, '<model>' that
    model's. Computing it per call means it can never lag behind the manager."""

    def __init__(self, manager: Manager, ready: Callable[[], bool] | None = None) -> None:
        from grpc_health.v1 import health_pb2

        self.manager = manager
        self.ready = ready or manager.ready
        self.pb = health_pb2

    def _status(self, service: str) -> int:
        resp = self.pb.HealthCheckResponse
        if service == "":
            return resp.SERVING if self.ready() else resp.NOT_SERVING
        mm = self.manager.models.get(service)
        if mm is None:
            return resp.SERVICE_UNKNOWN
        return resp.SERVING if mm.is_ready() else resp.NOT_SERVING

    def Check(self, request, meta: dict):
        status = self._status(request.service)
        if status == self.pb.HealthCheckResponse.SERVICE_UNKNOWN:
            raise NotFound(f"unknown service {request.service!r}")
        return self.pb.HealthCheckResponse(status=status)

    async def Watch(self, request, meta: dict):
        last = None
        while True:  # ends when the client cancels or the server stops
            status = self._status(request.service)
            if status != last:
                yield self.pb.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(0.1)

    def service(self) -> dict[str, dict[str, Method]]:
        # Only Check and Watch: grpcio-health-checking's servicer base class gains methods across
        # releases (List in 1.85), and these two are the protocol's promise.
        req, resp = self.pb.HealthCheckRequest, self.pb.HealthCheckResponse
        return {"grpc.health.v1.Health": {"Check": unary(self.Check, req, resp), "Watch": stream(self.Watch, req, resp)}}


def services(ctx: ServerContext) -> dict[str, dict[str, Method]]:
    return {**grpc_tfserving.services(ctx), **grpc_v2.services(ctx), **Health(ctx.manager, ctx.ready).service()}
