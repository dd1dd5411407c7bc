"""The OpenAPI 3.0 description of the REST API, served at GET /openapi.json.

It describes what clients send (paths, parameters, request bodies) precisely enough for
generators such as schemathesis to exercise every endpoint, and the error shape every failure
shares. It is kept beside the routes it describes; tests check that every path it lists
answers, and fuzz every operation.
"""

from __future__ import annotations

from typing import Any

import orjson

from hotserve import __version__

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
_LABEL = {"name": "label", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_KEY = {"name": "X-Request-Key", "in": "header", "required": False, "schema": {"type": "string"},
        "description": "sticky canary key: the same key lands on the same side of a canary split"}
_JSON_VALUE: dict[str, Any] = {}  # any JSON value

_PREDICT = {
    "type": "object",
    "properties": {
        "signature_name": {"type": "string"},
        "instances": {"type": "array", "items": _JSON_VALUE, "description": "row format: one entry per example"},
        "inputs": {"description": "columnar format: a tensor, or an object of named tensors"},
    },
    "description": "exactly one of instances or inputs; strings as {\"b64\": ...} when binary",
}
_EXAMPLES = {
    "type": "object",
    "properties": {"signature_name": {"type": "string"}, "context": {"type": "object"},
                   "examples": {"type": "array", "items": {"type": "object"}}},
    "required": ["examples"],
}
_V2_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": _JSON_VALUE, "parameters": {"type": "object"},
    },
    "required": ["name", "datatype", "shape"],
}
_V2_INFER = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "parameters": {"type": "object"},
                   "inputs": {"type": "array", "items": _V2_TENSOR},
                   "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}},
    "required": ["inputs"],
}
_VERSION_HEADER = {"X-Model-Version": {"description": "the version that produced this answer",
                                       "schema": {"type": "string"}},
                   "X-Model-Revision": {"description": "the parameter revision of that version (0: as loaded)",
                                        "schema": {"type": "string"}}}
_DELTA = {
    "type": "object",
    "properties": {
        "updates": {"type": "array", "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "values": _JSON_VALUE,
                           "rows": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
            "required": ["name", "values"]}},
        "expect_revision": {"type": "integer", "minimum": 0},
        "source": {"type": "string"},
    },
    "required": ["updates"],
    "description": "a parameter delta: whole tensors (values) or rows of them (rows + values); applied whole or not at "
                   "all. Also as Content-Type application/x-safetensors (tensors NAME, or NAME.rows + NAME.values)",
}


def _answers(ok: dict | None = None, ok_type: str = "application/json") -> dict:
    out = {"default": {"description": "an error: what was wrong and what was expected",
                       "content": {"application/json": {"schema": _ERROR}}}}
    out["200"] = {"description": "success", "headers": _VERSION_HEADER,
                  "content": {ok_type: {"schema": ok or {}}}}
    return out


def _op(summary: str, params: list | None = None, body: dict | None = None, secured: bool = False,
        ok_type: str = "application/json") -> dict:
    op: dict[str, Any] = {"summary": summary, "parameters": params or [], "responses": _answers(ok_type=ok_type)}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if secured:
        op["security"] = [{"adminToken": []}]
    return op


def document() -> dict:
    paths: dict[str, dict] = {}
    for prefix, params in (("/v1/models/{model}", [_MODEL]),
                           ("/v1/models/{model}/versions/{version}", [_MODEL, _VERSION]),
                           ("/v1/models/{model}/labels/{label}", [_MODEL, _LABEL])):
        paths[prefix] = {"get": _op("TF Serving: version status", params)}
        paths[prefix + "/metadata"] = {"get": _op("TF Serving: signature_def of every signature", params)}
        paths[prefix + ":predict"] = {"post": _op("TF Serving: predict", [*params, _KEY], _PREDICT)}
        paths[prefix + ":classify"] = {"post": _op("TF Serving: classify tf.Examples", [*params, _KEY], _EXAMPLES)}
        paths[prefix + ":regress"] = {"post": _op("TF Serving: regress tf.Examples", [*params, _KEY], _EXAMPLES)}
    paths["/v1/models/{model}/versions/{version}:update_parameters"] = {"post": _op(
        "live parameters: write a delta into a loaded version; answers model, version, revision, applied_ms "
        "(409 when expect_revision no longer holds)", [_MODEL, _VERSION], _DELTA, secured=True)}
    paths["/v2"] = {"get": _op("KServe V2: server metadata")}
    paths["/v2/health/live"] = {"get": _op("KServe V2: liveness")}
    paths["/v2/health/ready"] = {"get": _op("KServe V2: readiness")}
    for prefix, params in (("/v2/models/{model}", [_MODEL]), ("/v2/models/{model}/versions/{version}", [_MODEL, _VERSION])):
        paths[prefix] = {"get": _op("KServe V2: model metadata", params)}
        paths[prefix + "/ready"] = {"get": _op("KServe V2: model readiness", params)}
        paths[prefix + "/infer"] = {"post": _op("KServe V2: inference (JSON; Triton's binary extension too)",
                                                [*params, _KEY], _V2_INFER)}
    paths["/v2/repository/index"] = {"post": _op("Triton repository: index", body={"type": "object",
                                                 "properties": {"ready": {"type": "boolean"}}})}
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{model}}/{action}"] = {"post": _op(f"Triton repository: {action}", [_MODEL],
                                                                          {"type": "object"}, secured=True)}
    paths["/healthz"] = {"get": _op("liveness")}
    paths["/readyz"] = {"get": _op("readiness: every model has an available version, none degraded")}
    paths["/metrics"] = {"get": _op("Prometheus metrics", ok_type="text/plain")}
    paths["/monitoring/prometheus/metrics"] = {"get": _op("Prometheus metrics (TF Serving's path)", ok_type="text/plain")}
    paths["/v1/events"] = {"get": _op("the event bus: events after a sequence number, long polling", [
        {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 2}},
        {"name": "model", "in": "query", "schema": {"type": "string"}},
        {"name": "kind", "in": "query", "schema": {"type": "string"}},
    ])}
    paths["/v1/admin/models/{model}"] = {"get": _op("routing: default version, labels, canary, pin", [_MODEL], secured=True)}
    version_or_null = {"type": "integer", "minimum": 0, "nullable": True}
    for action, body in (
            ("labels", {"type": "object", "properties": {"labels": {"type": "object", "additionalProperties": version_or_null}},
                        "required": ["labels"]}),
            ("canary", {"type": "object", "properties": {"version": version_or_null,
                                                         "weight": {"type": "number", "minimum": 0, "maximum": 100}}}),
            ("pin", {"type": "object", "properties": {"version": version_or_null}}),
            ("rollback", {"type": "object", "properties": {"to": version_or_null, "revision": {
                "type": "string", "pattern": "^[0-9]+[.][0-9]+$",
                "description": "a parameter revision of a loaded version, VERSION.REVISION (e.g. 7.3)"}}}),
            ("compact", {"type": "object", "properties": {"version": version_or_null}}),
            ("load", {"type": "object"}), ("unload", {"type": "object"})):
        paths[f"/v1/admin/models/{{model}}/{action}"] = {"post": _op(f"management: {action}", [_MODEL], body, secured=True)}
    paths["/v1/admin/config:reload"] = {"post": _op("management: reload --model_config_file", body={"type": "object"},
                                                    secured=True)}
    paths["/openapi.json"] = {"get": _op("this document")}
    return {
        "openapi": "3.0.3",
        "info": {"title": "hotserve REST API", "version": __version__,
                 "description": "TensorFlow Serving's REST API, KServe V2 (Open Inference Protocol) REST, and "
                                "hotserve's management API. Every answer names the version that produced it."},
        "paths": paths,
        "components": {"securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}}},
    }


_CACHED: bytes | None = None


def document_bytes() -> bytes:
    global _CACHED
    if _CACHED is None:
        _CACHED = orjson.dumps(document())
    return _CACHED
