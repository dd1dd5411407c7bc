"""TensorFlow Serving's REST API under /v1/models: status, metadata, predict, classify, regress."""

from __future__ import annotations

from hotserve.core import inference, parameters
from hotserve.core.loaded import LoadedVersion
from hotserve.errors import InvalidArgument, MethodNotAllowed, NotFound, clip
from hotserve.protocols import tf_examples
from hotserve.protocols import tfserving_rest as tfs
from hotserve.runtimes.base import get_signature
from hotserve.server.http import Request
from hotserve.server.reply import JSON, Reply, error_reply
from hotserve.server.context import ServerContext
from hotserve.server.frame import Call, Done

KEY_HEADER = b"x-request-key"
ID_HEADER = b"x-request-id"
PREFIX = "/v1/models/"
_VERBS = ("predict", "classify", "regress")


def parse_version(text: str) -> int:
    if not text.isdigit():
        raise InvalidArgument(f"version must be a non-negative integer, got {clip(text)!r}")
    return int(text)


def reply_of(done: Done) -> Reply:
    """A frame's outcome as a REST answer: the body, or the error; the version either way,
    and the request id when there is one."""
    if done.error is not None:
        reply = error_reply(done.error, done.version)
    else:
        body, headers = done.value
        reply = Reply(200, body, done.version, headers)
    if done.request_id is not None:
        reply.headers = [*(reply.headers or [JSON]), (ID_HEADER, done.request_id.encode("latin-1", "replace"))]
    reply.revision = done.revision
    return reply


class V1Routes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def dispatch(self, rest: str, request: Request) -> Reply:
        method = request.method
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
            if verb not in _VERBS:
                raise NotFound(f"unknown verb :{verb}; expected :predict, :classify or :regress")
            if method != "POST":
                raise MethodNotAllowed(f":{verb} takes POST, got {method}")
            call, prepare, execute = self.model_call(name, version, label, verb, request)
            done = await self.ctx.frame.run(call, prepare, execute, self.ctx.timeout_seconds, "--rest_api_timeout_in_ms")
            return reply_of(done)
        if method != "GET":
            raise MethodNotAllowed(f"{method} is not allowed here; model status and metadata take GET")
        if tail == ["metadata"]:
            return self._metadata(name, version, label)
        if tail:
            raise NotFound(f"malformed path: /{'/'.join(tail)}; expected /metadata or nothing after the model")
        mm = self.ctx.manager.get(name)
        if label is not None:
            version = mm.label_version(label)
        doc = tfs.status_doc(mm.statuses(version))
        revisions = parameters.describe_loaded(mm)
        for entry in doc["model_version_status"]:
            p = revisions.get(int(entry["version"]))
            # Beyond TF Serving's fields, and only once a version took deltas: the revision it serves
            # and how it got there. Until then the status is exactly TF Serving's, so a client that
            # parses it strictly into GetModelStatusResponse keeps working.
            if p is not None and (p["revision"] or p.get("history")):
                entry["revision"] = p["revision"]
                if p.get("history"):
                    entry["revision_history"] = p["history"]
        outage = mm.storage_status()
        if outage is not None:  # only during a storage outage: served versions are kept, this says why nothing changes
            doc["storage"] = outage
        return Reply(200, tfs.dumps(doc))

    def model_call(self, name: str, version: int | None, label: str | None, verb: str, request: Request):
        """(Call, prepare, execute) of a predict / classify / regress request, for the frame."""
        body = request.body
        call = Call(name, version, label, request.header(KEY_HEADER), verb, "REST", len(body),
                    request.header(ID_HEADER))
        prepare, execute = self._predict(body) if verb == "predict" else self._examples(verb, body)
        return call, prepare, execute

    def inline(self, name: str, request: Request) -> Reply | None:
        """A `POST /v1/models/<name>:predict` answered right here on the event loop, when the
        model runs inline (--inference_threading=auto found it cheap); None otherwise."""
        mm = self.ctx.manager.models.get(name)
        if mm is None or not mm.runs_inline(len(request.body)):
            return None
        call, prepare, execute = self.model_call(name, None, None, "predict", request)
        return reply_of(self.ctx.frame.run_sync(call, prepare, execute))

    @staticmethod
    def _predict(body: bytes):
        def prepare():
            doc = tfs.parse_predict_body(body)
            return doc, tfs.signature_name(doc)

        def execute(lv: LoadedVersion, prepared):
            doc, sig_name = prepared
            inputs, rows = tfs.decode_predict(doc, get_signature(lv.servable, sig_name))
            return tfs.encode_predict(inference.predict(lv, inputs, sig_name), rows), None

        return prepare, execute

    @staticmethod
    def _examples(method: str, body: bytes):
        def prepare():
            doc = tfs.parse_body(body)
            return tfs.signature_name(doc), tf_examples.json_examples(doc)

        def execute(lv: LoadedVersion, prepared):
            sig_name, examples = prepared
            outputs = inference.run_examples(lv, method, examples, sig_name)
            if method == "classify":
                doc = tf_examples.classification_json(tf_examples.classification_result(outputs, len(examples)))
            else:
                doc = tf_examples.regression_json(tf_examples.regression_result(outputs, len(examples)))
            return tfs.dumps(doc), None

        return prepare, execute

    def _metadata(self, name: str, version: int | None, label: str | None) -> Reply:
        bound = self.ctx.manager.acquire(name, version, label)
        try:
            doc = tfs.metadata_doc(name, bound.version, bound.servable.signatures)
            if self.ctx.serving_shape:
                # A metadata field of hotserve's own beside signature_def (TF Serving's metadata is a
                # map of named fields): how this server runs the model, and why.
                mm = self.ctx.manager.get(name)
                doc["metadata"]["serving_shape"] = {
                    **self.ctx.serving_shape,
                    "inference_now": "event loop (measured cheap)" if mm.inline_ok else "model threads"}
            if bound.lv.params is not None:  # the revision, whether it takes deltas, its history
                doc["parameters"] = bound.lv.params.describe()
            reply = Reply(200, tfs.dumps(doc), bound.version_str)
            reply.revision = bound.revision_str
            return reply
        finally:
            bound.release()
