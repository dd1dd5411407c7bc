"""KServe V2 / Open Inference Protocol REST routes, with Triton's binary tensor and model
repository extensions."""

from __future__ import annotations

import orjson

from hotserve import __version__
from hotserve.core import control, inference, inline
from hotserve.errors import InvalidArgument, MethodNotAllowed, NotFound
from hotserve.protocols import limits, v2
from hotserve.protocols.json_body import parse_object
from hotserve.runtimes.base import get_signature
from hotserve.server.http import Request
from hotserve.server.reply import Reply
from hotserve.server.context import ServerContext
from hotserve.server.frame import Call
from hotserve.server.rest_tfserving import ID_HEADER, KEY_HEADER, reply_of

_OCTET = (b"content-type", b"application/octet-stream")


def _json(status: int, doc, version: str | None = None) -> Reply:
    return Reply(status, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), version)


class V2Routes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.manager = ctx.manager

    async def dispatch(self, path: str, request: Request) -> Reply:
        method = request.method
        parts = path.strip("/").split("/")[1:]  # drop "v2"
        if not parts:
            return _json(200, {"name": "hotserve", "version": __version__, "extensions": v2.EXTENSIONS})
        if parts[0] == "models" and len(parts) >= 2:
            name, rest = parts[1], parts[2:]
            target: tuple[int | None, str | None] = (None, None)  # (version, label)
            if rest[:1] == ["versions"] and len(rest) >= 2:
                target, rest = v2.version_field(rest[1]), rest[2:]
            if rest == ["infer"]:
                self._method(method, "POST")
                call, prepare, execute = self.model_call(name, target, request)
                done = await self.ctx.frame.run(call, prepare, execute, self.ctx.timeout_seconds, "--rest_api_timeout_in_ms")
                return reply_of(done)
            self._method(method, "GET")
            if rest == ["ready"]:
                return self._model_ready(name, target)
            if not rest:
                return self._model_metadata(name, target)
        if parts[0] == "repository":
            self._method(method, "POST")
            if parts[1:] == ["index"]:
                doc = parse_object(request.body, 'a JSON object like {"ready": true}', empty={})
                return _json(200, v2.repository_index(self.manager.models, doc.get("ready") is True))
            if len(parts) == 4 and parts[1] == "models" and parts[3] in ("load", "unload"):
                self.ctx.auth.check(request.header(b"authorization"))
                mm = self.manager.get(parts[2])
                await self.ctx.blocking(control.request_load if parts[3] == "load" else control.request_unload, mm)
                return _json(200, {})
        raise NotFound(f"no such V2 endpoint: {method} {path}")

    def model_call(self, name: str, target: tuple[int | None, str | None], request: Request,
                   weight: int | None = None):
        """(Call, prepare, execute) of an infer request, for the frame (`weight`: _weight(request),
        when the caller has it already)."""
        body = request.body
        call = Call(name, *target, request.header(KEY_HEADER), "infer", "REST",
                    _weight(request) if weight is None else weight, request.header(ID_HEADER))
        prepare, execute = self._infer(name, body, request.header(v2.BINARY_HEADER),
                                       request.header(b"content-encoding"), call)
        return call, prepare, execute

    def inline(self, name: str, request: Request) -> Reply | None:
        """A `POST /v2/models/<name>/infer` answered right here on the event loop when the model
        runs inline; None otherwise."""
        mm = self.manager.models.get(name)
        weight = _weight(request)
        if mm is None or not mm.runs_inline(weight):
            return None
        call, prepare, execute = self.model_call(name, (None, None), request, weight)
        return reply_of(self.ctx.frame.run_sync(call, prepare, execute))

    @staticmethod
    def _method(got: str, want: str) -> None:
        if got != want:
            raise MethodNotAllowed(f"this endpoint takes {want}, got {got}")

    def _model_ready(self, name: str, target: tuple[int | None, str | None]) -> Reply:
        ready = self.manager.get(name).is_ready(*target)
        return _json(200 if ready else 400, {"name": name, "ready": ready})

    def _model_metadata(self, name: str, target: tuple[int | None, str | None]) -> Reply:
        mm = self.manager.get(name)
        lv = self.manager.acquire(name, *target)
        try:
            sig = get_signature(lv.servable, None)
            doc = {
                "name": name,
                "versions": [str(v) for v in sorted(mm.route.table.versions)],
                "platform": v2.PLATFORMS.get(lv.servable.runtime, lv.servable.runtime),
                "inputs": v2.tensor_metadata(sig, "inputs"),
                "outputs": v2.tensor_metadata(sig, "outputs"),
            }
            return _json(200, doc, lv.version_str)
        finally:
            lv.release()

    @staticmethod
    def _infer(name: str, body: bytes, hdr: str | None, enc: str | None, call: Call):
        def prepare() -> v2.InferRequest:
            try:
                header_len = int(hdr) if hdr is not None else None
            except ValueError:
                raise InvalidArgument(f"Inference-Header-Content-Length must be an integer, got {hdr!r}") from None
            req = v2.decode_infer(limits.decompress(body, enc), header_len)
            if call.request_id is None and isinstance(req.id, str) and req.id:
                call.request_id = req.id  # V2's own request id names the request in the prediction log
            return req

        def execute(lv, req: v2.InferRequest):
            if req.id is None and call.request_id is not None:
                req.id = call.request_id  # the answer's body carries the id the server used
            sig = get_signature(lv.servable, None)
            outputs = v2.select_outputs(inference.predict(lv, req.inputs, None), req.outputs, sig)
            payload, json_len = v2.encode_infer(name, lv.version_str, req, outputs, lv.revision)
            headers = None if json_len is None else [_OCTET, (v2.BINARY_HEADER, str(json_len).encode())]
            return payload, headers

        return prepare, execute


def _weight(request: Request) -> int:
    """The request's weight for the inline decision: the JSON part in full, binary tensors (the
    binary extension, after the JSON) at a quarter; a compressed body in full (its size after
    inflating is unknown until it is inflated)."""
    size = len(request.body)
    hdr = request.header(v2.BINARY_HEADER)
    if hdr is None or request.header(b"content-encoding") is not None:
        return size
    try:
        json_len = min(max(int(hdr), 0), size)
    except ValueError:
        return size  # prepare() answers the 400
    return inline.request_weight(json_len, size - json_len)
