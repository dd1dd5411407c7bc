"""The REST front end as a bare ASGI app.

No web framework: routing is a few string checks, and everything CPU-bound for a predict
(JSON parse, decode, inference, encode) runs in one worker-thread hop so the event loop only
moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import orjson

from hotserve.core import inference
from hotserve.core.loaded import LoadedVersion
from hotserve.core.manager import Manager
from hotserve.errors import HotserveError, InvalidArgument, MethodNotAllowed, NotFound
from hotserve.observability import metrics
from hotserve.protocols import tfserving_rest as tfs
from hotserve.runtimes.base import get_signature
from hotserve.server.admin import AdminRoutes
from hotserve.server.asgi import JSON, Reply, error_reply, header, read_body
from hotserve.server.rest_v2 import V2Routes

log = logging.getLogger("hotserve.rest")

_VERSION_HEADER = b"x-model-version"
_KEY_HEADER = b"x-request-key"
_V1 = "/v1/models/"
# TF Serving's Prometheus path, and the usual one.
_METRICS_PATHS = ("/monitoring/prometheus/metrics", "/metrics")


def parse_version(text: str) -> int:
    if not text.isdigit():
        raise InvalidArgument(f"version must be a non-negative integer, got {text!r}")
    return int(text)


class RestApp:
    def __init__(self, manager: Manager, executor: ThreadPoolExecutor, timeout_seconds: float = 30.0,
                 admin: "AdminRoutes | None" = None) -> None:
        self.manager = manager
        self.executor = executor
        self.timeout_seconds = timeout_seconds
        self.v2 = V2Routes(manager, self)
        self.admin = admin or AdminRoutes(manager, self, token=None)

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
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _dispatch(self, scope, receive) -> Reply:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(_V1):
            return await self._v1(path[len(_V1):], method, scope, receive)
        if path in _METRICS_PATHS:
            return Reply(200, metrics.render(), headers=[(b"content-type", b"text/plain; version=0.0.4")])
        if path.startswith("/v1/admin/"):
            return await self.admin.dispatch(path[len("/v1/admin/"):], method, scope, receive)
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
        ready = self.manager.ready()
        return Reply(200 if ready else 503, orjson.dumps({"ready": ready, "models": models}))

    async def _v1(self, rest: str, method: str, scope, receive) -> Reply:
        verb = None
        if ":" in rest:
            rest, verb = rest.rsplit(":", 1)
        parts = rest.split("/")
        name, tail = parts[0], parts[1:]
        if not name:
            raise NotFound("model name missing: expected /v1/models/<name>")
        version: int | None = None
        label: str | None = None
        if tail[:1] == ["versions"] and len(tail) >= 2:
            version, tail = parse_version(tail[1]), tail[2:]
        elif tail[:1] == ["labels"] and len(tail) >= 2:
            label, tail = tail[1], tail[2:]
        if verb is not None:
            if tail:
                raise NotFound(f"malformed path: unexpected /{'/'.join(tail)} before :{verb}")
            if verb not in ("predict", "classify", "regress"):
                raise NotFound(f"unknown verb :{verb}; expected :predict, :classify or :regress")
            if method != "POST":
                raise MethodNotAllowed(f":{verb} takes POST, got {method}")
            body = await read_body(receive)
            key = header(scope, _KEY_HEADER)
            if verb == "predict":
                return await self.infer(name, len(body), self.observed, "predict", name, self._predict, name, version,
                                        label, key, body)
            return await self.infer(name, len(body), self.observed, verb, name, self._examples, verb, name, version,
                                    label, key, body)
        if method != "GET":
            raise MethodNotAllowed(f"{method} is not allowed here; model status and metadata take GET")
        if tail == ["metadata"]:
            return self._metadata(name, version, label)
        if tail:
            raise NotFound(f"malformed path: /{'/'.join(tail)}; expected /metadata or nothing after the model")
        mm = self.manager.get(name)
        if label is not None:
            version = mm.label_version(label)
        return Reply(200, tfs.dumps(tfs.status_doc(mm.statuses(version))))

    async def infer(self, model: str, size: int, fn, *args) -> Reply:
        """Run a model request: on the event loop when --inference_threading=auto found the model
        cheap and the request is small (no thread hop), else in the worker pool."""
        mm = self.manager.models.get(model)
        if mm is not None and mm.runs_inline(size):
            return fn(*args)
        return await self.run(fn, *args)

    async def run(self, fn, *args, bounded: bool = True) -> Reply:
        """Run fn in the worker pool; with bounded, answer 504 after --rest_api_timeout_in_ms.
        Management calls pass bounded=False: each carries its own, longer bound."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, fn, *args)
        if not bounded:
            return await future
        try:
            return await asyncio.wait_for(future, self.timeout_seconds)
        except asyncio.TimeoutError:
            return Reply(504, tfs.encode_error(f"request did not finish within {self.timeout_seconds:g}s (--rest_api_timeout_in_ms)"),
                         code="DEADLINE_EXCEEDED")

    @staticmethod
    def observed(api: str, name: str, fn, *args) -> Reply:
        t0 = time.perf_counter()
        reply = fn(*args)
        metrics.record_request(name, reply.version or "", api, "REST", reply.code, time.perf_counter() - t0)
        return reply

    def bound(self, name: str, version: int | None, label: str | None, key: str | None,
              prepare: Callable[[], Any], run: Callable[[LoadedVersion, Any], tuple[bytes, list | None]]) -> Reply:
        """The frame of every model request: prepare() (parse; its errors name no version),
        bind one version, run(lv, prepared) -> (body, headers), release the handle. Errors after
        binding carry the version that produced them."""
        try:
            prepared = prepare()
            lv = self.manager.acquire(name, version, label, key)
        except HotserveError as exc:
            return error_reply(exc)
        try:
            body, headers = run(lv, prepared)
            return Reply(200, body, lv.version_str, headers)
        except HotserveError as exc:
            return error_reply(exc, lv.version_str)
        finally:
            lv.release()

    def _predict(self, name: str, version: int | None, label: str | None, key: str | None, body: bytes) -> Reply:
        def prepare():
            doc = tfs.parse_body(body)
            return doc, tfs.signature_name(doc)

        def run(lv: LoadedVersion, prepared):
            doc, sig_name = prepared
            inputs, rows = tfs.decode_predict(doc, get_signature(lv.servable, sig_name))
            return tfs.encode_predict(inference.predict(lv, inputs, sig_name), rows), None

        return self.bound(name, version, label, key, prepare, run)

    def _examples(self, method: str, name: str, version: int | None, label: str | None, key: str | None,
                  body: bytes) -> Reply:
        from hotserve.protocols import tf_examples

        def prepare():
            doc = tfs.parse_body(body)
            return tfs.signature_name(doc), tf_examples.json_examples(doc)

        def run(lv: LoadedVersion, prepared):
            sig_name, examples = prepared
            outputs = inference.run_examples(lv, method, examples, sig_name)
            if method == "classify":
                doc = tf_examples.classification_json(tf_examples.classification_result(outputs, len(examples)))
            else:
                doc = tf_examples.regression_json(tf_examples.regression_result(outputs, len(examples)))
            return tfs.dumps(doc), None

        return self.bound(name, version, label, key, prepare, run)

    def _metadata(self, name: str, version: int | None, label: str | None) -> Reply:
        lv = self.manager.acquire(name, version, label)
        try:
            doc = tfs.metadata_doc(name, lv.version, lv.servable.signatures)
            return Reply(200, tfs.dumps(doc), lv.version_str)
        finally:
            lv.release()


async def _lifespan(receive, send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
