"""The gRPC front end (grpc.aio) on --port: TF Serving's PredictionService and ModelService,
KServe V2's GRPCInferenceService, and grpc.health.v1.

Handlers hop once to the worker pool for everything CPU-bound, like the REST front end, and
go through the same manager handles, so a hot swap looks the same on every protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import grpc

from hotserve.core.manager import Manager
from hotserve.errors import HotserveError
from hotserve.observability import metrics
from hotserve.server.auth import AdminAuth
from hotserve.server import grpc_tfserving, grpc_v2

log = logging.getLogger("hotserve.grpc")

# TF Serving lifts gRPC's 4 MB default to INT_MAX so large tensors fit in one message.
MAX_MESSAGE_BYTES = 2**31 - 1


def _model_of(request) -> str:
    spec = getattr(request, "model_spec", None)
    if spec is not None:
        return spec.name
    tasks = getattr(request, "tasks", None)
    if tasks:
        return tasks[0].model_spec.name
    return getattr(request, "model_name", "") or getattr(request, "name", "")


def _version_of(response) -> str:
    spec = getattr(response, "model_spec", None)
    if spec is not None:
        return str(spec.version.value)
    return getattr(response, "model_version", "")


def unary(fn: Callable, req_cls, resp_cls, executor: ThreadPoolExecutor, api: str | None = None,
          manager: Manager | None = None) -> grpc.RpcMethodHandler:
    """A unary handler running fn(request, metadata) in the worker pool, mapping HotserveError to
    its status; with `api`, each call is counted in the request metrics. With `manager`, a small
    request to a model --inference_threading=auto found cheap runs on the loop instead."""

    async def handler(request, context: grpc.aio.ServicerContext):
        meta = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        t0 = time.perf_counter()
        code, version = "OK", ""
        try:
            mm = manager.models.get(_model_of(request)) if manager is not None else None
            # ByteSize() walks the message (0.3 us at 3 KiB, 0.8 ms at 12 MiB): ask only when inline is possible.
            if mm is not None and mm.inline_ok and mm.runs_inline(request.ByteSize()):
                response = fn(request, meta)
            else:
                response = await asyncio.get_running_loop().run_in_executor(executor, fn, request, meta)
            version = _version_of(response) if api else ""
            return response
        except HotserveError as exc:
            code = exc.code.value
            await context.abort(grpc.StatusCode[exc.code.value], exc.message)
        except Exception as exc:
            code = "INTERNAL"
            log.exception("gRPC handler %s failed", getattr(fn, "__name__", fn))
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if api:
                metrics.record_request(_model_of(request), version, api, "GRPC", code, time.perf_counter() - t0)

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=req_cls.FromString, response_serializer=resp_cls.SerializeToString
    )


class _Health:
    """grpc.health.v1 answered from live state: '' is the server's readiness, '<model>' that
    model's. Computing it per call means it can never lag behind the manager."""

    def __init__(self, manager: Manager) -> None:
        from grpc_health.v1 import health_pb2

        self.manager = manager
        self.pb = health_pb2

    def _status(self, service: str) -> int:
        resp = self.pb.HealthCheckResponse
        if service == "":
            return resp.SERVING if self.manager.ready() else resp.NOT_SERVING
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
    def __init__(self, manager: Manager, executor: ThreadPoolExecutor, host: str, port: int,
                 auth: AdminAuth | None = None, reload_timeout_seconds: float = 60.0, reuse_port: bool = False) -> None:
        self.reuse_port = reuse_port
        self.manager = manager
        self.executor = executor
        self.host = host
        self.port = port
        self.auth = auth or AdminAuth(None)
        self.reload_timeout_seconds = reload_timeout_seconds
        self.server: grpc.aio.Server | None = None

    async def start(self) -> int:
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ]
        )
        self.server.add_generic_rpc_handlers(
            grpc_tfserving.handlers(self.manager, self.executor, self.auth, self.reload_timeout_seconds)
            + grpc_v2.handlers(self.manager, self.executor, self.auth)
        )
        self.server.add_generic_rpc_handlers([_Health(self.manager).handler()])
        host = f"[{self.host}]" if ":" in self.host else self.host
        bound = self.server.add_insecure_port(f"{host}:{self.port}")
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {self.host}:{self.port}")
        await self.server.start()
        return bound

    async def stop(self, grace: float = 5.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
