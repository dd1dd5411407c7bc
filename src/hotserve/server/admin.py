"""REST management API under /v1/admin (token-protected): labels, canary, pin, rollback,
load, unload, config reload. Each change waits (bounded) until it took effect and answers
with the model's routing: default version, labels, canary split, pin."""

from __future__ import annotations

import orjson

from hotserve.core import control, parameters
from hotserve.errors import InvalidArgument, MethodNotAllowed, NotFound
from hotserve.protocols.json_body import parse_object
from hotserve.server.http import Request
from hotserve.server.reply import Reply
from hotserve.server.context import ServerContext


def _int_or_none(doc: dict, key: str) -> int | None:
    value = doc.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InvalidArgument(f"{key!r} must be a version number or null, got {value!r}")
    return value


class AdminRoutes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def dispatch(self, rest: str, request: Request) -> Reply:
        method = request.method
        self.ctx.auth.check(request.header(b"authorization"))
        body = request.body
        call = self.ctx.blocking
        if rest == "config:reload":
            if method != "POST":
                raise MethodNotAllowed("config:reload takes POST")
            if self.ctx.reload_config is None:
                raise NotFound("this server was not started with --model_config_file; there is no config to reload")
            return Reply(200, orjson.dumps(await call(self.ctx.reload_config)))
        parts = rest.split("/")
        if len(parts) < 2 or parts[0] != "models":
            raise NotFound(f"no such admin endpoint: /v1/admin/{rest}")
        mm = self.ctx.manager.get(parts[1])
        action = parts[2] if len(parts) > 2 else ""
        if action == "" and len(parts) == 2:
            if method != "GET":
                raise MethodNotAllowed("GET /v1/admin/models/<m> reads the routing; changes take POST on a sub-path")
            return Reply(200, orjson.dumps(control.routing(mm)))
        if method != "POST":
            raise MethodNotAllowed(f"/v1/admin/models/<m>/{action} takes POST")
        doc = parse_object(body, "a JSON object", empty={})
        if action == "labels":
            labels = doc.get("labels")
            if not isinstance(labels, dict) or not labels:
                raise InvalidArgument('expected {"labels": {"<label>": <version or null>, ...}}')
            changes = {str(k): _int_or_none(labels, k) for k in labels}
            result = await call(control.set_labels, mm, changes)
        elif action == "canary":
            weight = doc.get("weight")
            if weight is not None and (not isinstance(weight, (int, float)) or isinstance(weight, bool)):
                raise InvalidArgument(f"'weight' must be a percentage, got {weight!r}")
            result = await call(control.set_canary, mm, _int_or_none(doc, "version"), weight)
        elif action == "pin":
            result = await call(control.pin, mm, _int_or_none(doc, "version"))
        elif action == "rollback" and doc.get("revision") is not None:
            # A parameter revision of a loaded version ("7.3"): instant within the kept history.
            version, revision = parameters.parse_revision_ref(doc["revision"])
            result = await call(parameters.rollback, mm, version, revision)
        elif action == "rollback":
            result = await call(control.rollback, mm, _int_or_none(doc, "to"))
        elif action == "compact":
            result = await call(parameters.compact, mm, _int_or_none(doc, "version"))
        elif action == "load":
            await call(control.request_load, mm)
            result = control.routing(mm)
        elif action == "unload":
            await call(control.request_unload, mm)
            result = control.routing(mm)
        else:
            raise NotFound(f"unknown admin action {action!r}; expected labels, canary, pin, rollback, compact, load, unload")
        return Reply(200, orjson.dumps(result))
