"""REST management API under /v1/admin (token-protected): labels, canary, pin, rollback,
load, unload, config reload. Each change waits (bounded) until it took effect and answers
with the model's routing: default version, labels, canary split, pin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import orjson

from hotserve.core.manager import Manager
from hotserve.errors import InvalidArgument, MethodNotAllowed, NotFound
from hotserve.server.auth import AdminAuth

from hotserve.protocols.json_body import parse_object
from hotserve.server.asgi import Reply, header, read_body

if TYPE_CHECKING:
    from hotserve.server.rest import RestApp


def _int_or_none(doc: dict, key: str) -> int | None:
    value = doc.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InvalidArgument(f"{key!r} must be a version number or null, got {value!r}")
    return value


class AdminRoutes:
    def __init__(self, manager: Manager, app: "RestApp", token: str | None,
                 reload_config: Callable[[], dict] | None = None) -> None:
        self.manager = manager
        self.app = app
        self.auth = AdminAuth(token)
        self.reload_config = reload_config

    async def _call(self, fn, *args):
        # Each management call carries its own bound (a load or reload may take a minute);
        # the inference timeout does not apply.
        return await self.app.run(fn, *args, bounded=False)

    async def dispatch(self, rest: str, method: str, scope, receive) -> Reply:
        self.auth.check(header(scope, b"authorization"))
        body = await read_body(receive)
        if rest == "config:reload":
            if method != "POST":
                raise MethodNotAllowed("config:reload takes POST")
            if self.reload_config is None:
                raise NotFound("this server was not started with --model_config_file; there is no config to reload")
            result = await self._call(self.reload_config)
            return result if isinstance(result, Reply) else Reply(200, orjson.dumps(result))
        parts = rest.split("/")
        if len(parts) < 2 or parts[0] != "models":
            raise NotFound(f"no such admin endpoint: /v1/admin/{rest}")
        mm = self.manager.get(parts[1])
        action = parts[2] if len(parts) > 2 else ""
        if action == "" and len(parts) == 2:
            if method != "GET":
                raise MethodNotAllowed("GET /v1/admin/models/<m> reads the routing; changes take POST on a sub-path")
            return Reply(200, orjson.dumps(mm.routing()))
        if method != "POST":
            raise MethodNotAllowed(f"/v1/admin/models/<m>/{action} takes POST")
        doc = parse_object(body, "a JSON object", empty={})
        if action == "labels":
            labels = doc.get("labels")
            if not isinstance(labels, dict) or not labels:
                raise InvalidArgument('expected {"labels": {"<label>": <version or null>, ...}}')
            changes = {str(k): _int_or_none(labels, k) for k in labels}
            result = await self._call(mm.set_labels, changes)
        elif action == "canary":
            weight = doc.get("weight")
            if weight is not None and (not isinstance(weight, (int, float)) or isinstance(weight, bool)):
                raise InvalidArgument(f"'weight' must be a percentage, got {weight!r}")
            result = await self._call(mm.set_canary, _int_or_none(doc, "version"), weight)
        elif action == "pin":
            result = await self._call(mm.pin, _int_or_none(doc, "version"))
        elif action == "rollback":
            result = await self._call(mm.rollback, _int_or_none(doc, "to"))
        elif action == "load":
            await self._call(mm.request_load)
            result = mm.routing()
        elif action == "unload":
            await self._call(mm.request_unload)
            result = mm.routing()
        else:
            raise NotFound(f"unknown admin action {action!r}; expected labels, canary, pin, rollback, load, unload")
        if isinstance(result, Reply):  # the bounded wait ran out: the change goes on in the background
            return result
        return Reply(200, orjson.dumps(result))
