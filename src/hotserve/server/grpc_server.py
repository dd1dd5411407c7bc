"""The grpcio front end (--grpc_frontend grpcio): grpc.aio on --port, serving the method tables of
server/grpc_services.py (TF Serving's PredictionService and ModelService, KServe V2's
GRPCInferenceService, grpc.health.v1) through an adapter.

Model RPCs go through the same request frame as REST (server/frame.py), so a hot swap looks
the same on every protocol.
"""

from __future__ import annotations

import logging

import grpc

from hotserve.errors import HotserveError
from hotserve.server.context import ServerContext
from hotserve.server.grpc_handlers import (DEADLINE_FLAG, Method, Outcome, deadline_of, framed_outcome, plan_call,
                                           run_unary)
from hotserve.server.grpc_services import services

log = logging.getLogger("hotserve.grpc")

# TF Serving lifts gRPC's 4 MB default to INT_MAX so large tensors fit in one message.
MAX_MESSAGE_BYTES = 2**31 - 1


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


async def _answer(context: grpc.aio.ServicerContext, out: Outcome):
    if out.code is not None:
        await context.abort(grpc.StatusCode[out.code], out.message, trailing_metadata=out.trailing)
        return None
    if out.trailing:
        context.set_trailing_metadata(out.trailing)
    return out.value


def _aio_handler(m: Method, ctx: ServerContext) -> grpc.RpcMethodHandler:
    if m.kind == "unary":
        async def handler(request, context: grpc.aio.ServicerContext):
            return await _answer(context, await run_unary(ctx, m, request, metadata_of(context)))
    elif m.kind == "framed":
        async def handler(request, context: grpc.aio.ServicerContext):
            planned = plan_call(ctx, m, request, metadata_of(context))
            if isinstance(planned, Outcome):
                return await _answer(context, planned)
            done = await ctx.frame.run(*planned, deadline_of(ctx, context.time_remaining()), DEADLINE_FLAG)
            return await _answer(context, framed_outcome(done))
    else:
        async def streaming(request, context: grpc.aio.ServicerContext):
            try:
                async for resp in m.fn(request, metadata_of(context)):
                    yield resp
            except HotserveError as exc:
                await context.abort(grpc.StatusCode[exc.code.value], exc.message)

        return grpc.unary_stream_rpc_method_handler(
            streaming, request_deserializer=m.req_cls.FromString, response_serializer=m.resp_cls.SerializeToString)
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=m.req_cls.FromString, response_serializer=m.resp_cls.SerializeToString)


def aio_handlers(tables: dict[str, dict[str, Method]], ctx: ServerContext) -> list[grpc.GenericRpcHandler]:
    return [grpc.method_handlers_generic_handler(service, {name: _aio_handler(m, ctx) for name, m in methods.items()})
            for service, methods in tables.items()]


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
        self.server.add_generic_rpc_handlers(aio_handlers(services(self.ctx), self.ctx))
        host = f"[{self.host}]" if ":" in self.host else self.host
        bound = self.server.add_insecure_port(f"{host}:{self.port}")
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {self.host}:{self.port}")
        await self.server.start()
        return bound

    async def stop(self, grace: float = 5.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
