"""gRPC methods, independent of the transport that carries them.

A service is a table {method name: Method}. A Method is one of three kinds:
- `unary`: fn(request, metadata) runs in the worker pool (status, metadata, management);
- `framed`: plan(request, metadata) -> (Call, prepare, execute) goes through the request frame,
  so a model RPC binds, runs, releases, records and maps errors exactly as REST does, and names
  the bound version in the trailing metadata (`x-model-version`) of every answer, errors included;
- `stream`: fn(request, metadata) is an async iterator of responses (health Watch).

Two transports serve the same tables (server/grpc_services.py): the native HTTP/2 front end
(server/grpc_h2.py, the default) and grpc.aio (server/grpc_server.py). Neither this module nor
the native front end imports grpcio: a worker that does not serve through it does not load it
(8.5 MiB of resident memory a process). What a call answers is an `Outcome`, so both map
results, errors and trailing metadata the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from hotserve.core import inline
from hotserve.errors import HotserveError
from hotserve.observability import tracing
from hotserve.server.context import ServerContext
from hotserve.server.frame import Call, Done

log = logging.getLogger("hotserve.grpc")

VERSION_METADATA = "x-model-version"
REVISION_METADATA = "x-model-revision"
KEY_METADATA = "x-request-key"
ID_METADATA = "x-request-id"

# plan(request, metadata) -> (Call, prepare, execute): what the frame needs for one model RPC.
Planner = Callable[[Any, dict], tuple[Call, Callable[[], Any], Callable[[Any, Any], Any]]]


@dataclass(frozen=True)
class Method:
    kind: str  # "unary" | "framed" | "stream"
    fn: Callable
    req_cls: Any
    resp_cls: Any


def unary(fn: Callable[[Any, dict], Any], req_cls, resp_cls) -> Method:
    return Method("unary", fn, req_cls, resp_cls)


def framed(plan: Planner, req_cls, resp_cls) -> Method:
    return Method("framed", plan, req_cls, resp_cls)


def stream(fn: Callable[[Any, dict], Any], req_cls, resp_cls) -> Method:
    return Method("stream", fn, req_cls, resp_cls)


@dataclass
class Outcome:
    """A call's answer: the response message, or a status code name (grpc.StatusCode's) and
    message; trailing metadata either way."""

    value: Any = None
    code: str | None = None  # None: OK
    message: str = ""
    trailing: tuple = ()


def error_outcome(exc: Exception, what: Any) -> Outcome:
    if isinstance(exc, HotserveError):
        return Outcome(code=exc.code.value, message=exc.message)
    log.error("gRPC handler %s failed", getattr(what, "__name__", what), exc_info=exc)
    return Outcome(code="INTERNAL", message=f"internal error: {type(exc).__name__}: {exc}")


async def run_unary(ctx: ServerContext, m: Method, request: Any, meta: dict) -> Outcome:
    try:
        return Outcome(await ctx.blocking(m.fn, request, meta))
    except Exception as exc:
        return error_outcome(exc, m.fn)


def plan_call(ctx: ServerContext, m: Method, request: Any, meta: dict, message_bytes: int | None = None):
    """(call, prepare, execute) of a framed method, or the Outcome of a request it refuses.
    message_bytes: the request's size on the wire when the transport knows it."""
    if tracing.ENABLED:
        tracing.set_incoming(meta)
    try:
        call, prepare, execute = m.fn(request, meta)
    except Exception as exc:
        return error_outcome(exc, m.fn)
    rid = meta.get(ID_METADATA)
    if rid:
        call.request_id = rid
    mm = ctx.manager.models.get(call.model)
    if mm is not None and mm.inline_ok:
        # protobuf has parsed it already: its bytes weigh as raw tensor bytes. ByteSize() walks the
        # message (0.3 us at 3 KiB, 0.8 ms at 12 MiB): asked only when inline is possible.
        call.size = inline.request_weight(0, request.ByteSize() if message_bytes is None else message_bytes)
    return call, prepare, execute


def framed_outcome(done: Done) -> Outcome:
    trailing = ((VERSION_METADATA, done.version), (REVISION_METADATA, done.revision or "0")) if done.version else ()
    if done.request_id is not None:
        trailing += ((ID_METADATA, done.request_id),)
    if done.error is None:
        return Outcome(done.value, trailing=trailing)
    retry = getattr(done.error, "retry_after", None)
    if retry is not None:
        trailing += (("retry-after", str(max(1, int(retry + 0.999)))),)
    return Outcome(code=done.error.code.value, message=done.error.message, trailing=trailing)


def deadline_of(ctx: ServerContext, remaining: float | None) -> float:
    """The client's deadline bounds the call (and frees the model's slot when it passes); without
    one, the REST timeout applies, so a hung model cannot hold a gRPC call forever."""
    return min(remaining, ctx.timeout_seconds) if remaining is not None else ctx.timeout_seconds


DEADLINE_FLAG = "the call's deadline or --rest_api_timeout_in_ms"
