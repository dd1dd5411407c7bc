"""OpenTelemetry tracing (the optional `otel` extra): one span per model request.

Off unless an OTLP endpoint is configured (--otel_exporter_otlp_endpoint, or the standard
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Off, the request path pays
one module-global boolean test per request and OpenTelemetry is never imported. On, the request
frame opens a span `<api> <model>` (kind SERVER) around prepare -> bind -> execute -> release,
child of the caller's `traceparent` (W3C trace context, REST header or gRPC metadata), with
attributes:

    hotserve.model, hotserve.version (the bound version), hotserve.revision (when the version has
    one), hotserve.api, hotserve.entrypoint (REST | GRPC), hotserve.status (OK or the error code),
    hotserve.request_bytes, hotserve.batch.size (rows of the batch the request ran in, with
    dynamic batching)

Spans are exported by a BatchSpanProcessor over OTLP/HTTP (protobuf); the usual OTEL_* variables
(OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*, OTEL_EXPORTER_OTLP_HEADERS...) apply.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from typing import Any

log = logging.getLogger("hotserve.tracing")

# Read on every request: keep it a plain module global.
ENABLED = False
_tracer: Any = None
_provider: Any = None
_propagator: Any = None
# The caller's trace context, set by a front end for the request being handled (asyncio task).
_incoming: contextvars.ContextVar[Any] = contextvars.ContextVar("hotserve_trace_parent", default=None)
# Rows of the batch the current thread's request ran in (set by the batcher when tracing is on).
_batch = threading.local()

ENV_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TracingUnavailable(ValueError):
    """Tracing is configured but the `otel` extra is not installed (the server refuses to start)."""


def wanted(endpoint: str | None) -> bool:
    """Whether tracing is configured (flag or standard environment), and not disabled."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return False
    return bool(endpoint or any(os.environ.get(k) for k in ENV_ENDPOINTS))


def configure(endpoint: str | None, worker: str | None = None) -> bool:
    """Turn tracing on when configured; TracingUnavailable if the `otel` extra is missing."""
    global ENABLED, _tracer, _provider, _propagator
    if not wanted(endpoint):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        raise TracingUnavailable(
            f"tracing is configured but OpenTelemetry is not installed ({exc}); pip install 'hotserve[otel]'") from None
    attrs = {"service.name": os.environ.get("OTEL_SERVICE_NAME", "hotserve")}
    if worker is not None:
        attrs["service.instance.id"] = f"{os.uname().nodename}:{os.getpid()}:worker-{worker}"
    _provider = TracerProvider(resource=Resource.create(attrs))
    if endpoint:
        url = endpoint.rstrip("/")
        exporter = OTLPSpanExporter(endpoint=url if url.endswith("/v1/traces") else url + "/v1/traces")
    else:
        exporter = OTLPSpanExporter()  # the OTEL_EXPORTER_OTLP_* environment decides
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer = _provider.get_tracer("hotserve")
    _propagator = TraceContextTextMapPropagator()
    trace.set_tracer_provider(_provider)
    ENABLED = True
    log.info("tracing on: a span per model request, exported over OTLP/HTTP to %s",
             endpoint or next(os.environ[k] for k in ENV_ENDPOINTS if os.environ.get(k)))
    return True


def shutdown() -> None:
    """Flush the spans still queued (server shutdown)."""
    global ENABLED
    if _provider is not None:
        ENABLED = False
        _provider.shutdown()


def set_incoming(carrier: dict[str, str]) -> None:
    """A front end hands over the request's headers/metadata (lower-case keys) for their
    `traceparent`; call only when ENABLED."""
    if "traceparent" in carrier:
        _incoming.set(_propagator.extract(carrier))


def incoming() -> Any:
    return _incoming.get()


def start(call: Any) -> Any:
    """A started span for a model request (the frame calls this only when ENABLED)."""
    from opentelemetry.trace import SpanKind

    _batch.rows = None
    return _tracer.start_span(f"{call.api} {call.model}", context=getattr(call, "trace_parent", None),
                              kind=SpanKind.SERVER,
                              attributes={"hotserve.model": call.model, "hotserve.api": call.api,
                                          "hotserve.entrypoint": call.entrypoint,
                                          "hotserve.request_bytes": call.size})


def finish(span: Any, lv: Any, status: str) -> None:
    if lv is not None:
        span.set_attribute("hotserve.version", lv.version)
        revision = getattr(lv, "revision", None)
        if revision is not None:
            span.set_attribute("hotserve.revision", revision)
    rows = getattr(_batch, "rows", None)
    if rows is not None:
        span.set_attribute("hotserve.batch.size", rows)
    span.set_attribute("hotserve.status", status)
    if status != "OK":
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, status))
    span.end()


def note_batch(rows: int) -> None:
    """The batcher: the current request ran in a batch of `rows` rows."""
    _batch.rows = rows
