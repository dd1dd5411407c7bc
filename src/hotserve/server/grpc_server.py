"""The gRPC front end (grpc.aio) on --port: TF Serving's PredictionService and ModelService,
KServe V2's GRPCInferenceService, and grpc.health.v1.

Model RPCs go through the same request frame as REST (server/frame.py), so a hot swap looks
the same on every protocol.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import grpc

from hotserve.core.manager import Manager
from hotserve.server import grpc_tfserving, grpc_v2
from hotserve.server.context import ServerContext

log = logging.getLogger("hotserve.grpc")

# TF Serving lifts gRPC's 4 MB default to INT_MAX so large tensors fit in one message.
MAX_MESSAGE_BYTES = 2**31 - 1


class _Health:
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

    async def Check(self, request, context: grpc.aio.ServicerContext):
        status = self._status(request.service)
        if status == self.pb.HealthCheckResponse.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return self.pb.HealthCheckResponse(status=status)

    async def Watch(self, request, context: grpc.aio.ServicerContext):
        last = None
        while True:  # ends when the client cancels or the server stops
            status = self._status(request.service)
            if status != last:
                yield self.pb.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(0.1)

    def handler(self) -> grpc.GenericRpcHandler:
        # Registered by hand: grpcio-health-checking's servicer base class gains methods across
        # releases (List in 1.85), and only Check and Watch are the protocol's promise.
        req, resp = self.pb.HealthCheckRequest, self.pb.HealthCheckResponse
        return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.Check, request_deserializer=req.FromString, response_serializer=resp.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self.Watch, request_deserializer=req.FromString, response_serializer=resp.SerializeToString),
        })


class GrpcServer:
    def __init__(self, ctx: ServerContext, host: str, port: int, reuse_port: bool = False) -> None:
        self.ctx = ctx
        self.reuse_port = reuse_port
        self.host = host
        self.port = port
        self.server: grpc.aio.Server | None = None

    async def start(self) -> int:
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ]
        )
        self.server.add_generic_rpc_handlers(grpc_tfserving.handlers(self.ctx) + grpc_v2.handlers(self.ctx))
        self.server.add_generic_rpc_handlers([_Health(self.ctx.manager, self.ctx.ready).handler()])
        host = f"[{self.host}]" if ":" in self.host else self.host
        bound = self.server.add_insecure_port(f"{host}:{self.port}")
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {self.host}:{self.port}")
        await self.server.start()
        return bound

    async def stop(self, grace: float = 5.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
