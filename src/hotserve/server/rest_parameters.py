"""POST /v1/models/{m}/versions/{v}:update_parameters (admin token): a parameter delta, JSON or
safetensors, applied whole or not at all; answers {"model", "version", "revision", "applied_ms"}."""

from __future__ import annotations

import time

import orjson

from hotserve.core import parameters
from hotserve.errors import HotserveError, InvalidArgument, MethodNotAllowed, NotFound
from hotserve.protocols import deltas
from hotserve.server.context import ServerContext
from hotserve.server.http import Request
from hotserve.server.reply import Reply

VERB = ":update_parameters"
PREFIX = "/v1/models/"


def is_parameters_path(path: str) -> bool:
    return path.startswith(PREFIX) and path.endswith(VERB)


class ParameterRoutes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def dispatch(self, path: str, request: Request) -> Reply:
        received = time.perf_counter()
        parts = path[len(PREFIX):-len(VERB)].split("/")
        if len(parts) != 3 or parts[1] != "versions" or not parts[0]:
            raise NotFound("expected POST /v1/models/<model>/versions/<version>:update_parameters")
        if not parts[2].isdigit():
            raise InvalidArgument(f"version must be a non-negative integer, got {parts[2][:50]!r}")
        if request.method != "POST":
            raise MethodNotAllowed(f":update_parameters takes POST, got {request.method}")
        self.ctx.auth.check(request.header(b"authorization"))
        mm = self.ctx.manager.get(parts[0])
        version = int(parts[2])
        body, ctype, query = request.body, request.header(b"content-type"), request.query

        def run():
            keeper = parameters.keeper_of(mm, version)
            try:
                updates, expect, source = deltas.parse(body, ctype, query)
            except HotserveError as exc:
                keeper.rejected(exc, "api")
                raise
            return keeper.apply(updates, expect, source, received).doc()

        doc = await self.ctx.blocking(run)
        reply = Reply(200, orjson.dumps(doc), str(version))
        reply.revision = str(doc["revision"])
        return reply
