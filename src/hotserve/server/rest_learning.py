"""REST routes for continuous learning: `POST /v1/models/{m}:feedback` and
`GET /v1/models/{m}/learning`. The store's I/O runs in the worker pool, never on the loop."""

from __future__ import annotations

import orjson

from hotserve.errors import Code, HotserveError, MethodNotAllowed, NotFound
from hotserve.learning.feedback import MAX_BODY_BYTES, check_size
from hotserve.server.context import ServerContext
from hotserve.server.http import Request
from hotserve.server.reply import Reply

PREFIX = "/v1/models/"


def is_learning_path(path: str) -> bool:
    return path.startswith(PREFIX) and (path.endswith(":feedback") or path.endswith("/learning"))


class LearningRoutes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def dispatch(self, path: str, request: Request) -> Reply:
        method = request.method
        rest = path[len(PREFIX):]
        service = self.ctx.learning
        if rest.endswith(":feedback"):
            model = rest[:-len(":feedback")]
            if method != "POST":
                raise MethodNotAllowed(f":feedback takes POST, got {method}")
            self._check(model, service)
            body = request.body  # the HTTP server already refused bodies over --rest_api_max_body_bytes
            check_size(len(body), MAX_BODY_BYTES)
            doc = await self.ctx.blocking(service.feedback, model, body)
            return Reply(200, orjson.dumps(doc))
        model = rest[:-len("/learning")]
        if method != "GET":
            raise MethodNotAllowed(f"/learning takes GET, got {method}")
        self._check(model, service)
        return Reply(200, orjson.dumps(await self.ctx.blocking(service.status, model)))

    def _check(self, model: str, service) -> None:
        if not model or "/" in model:
            raise NotFound("malformed path: expected /v1/models/<name>:feedback or /v1/models/<name>/learning")
        self.ctx.manager.get(model)  # 404 for an unknown model
        if service is None:
            raise HotserveError("continuous learning is off on this server: start it with --learning_dir DIR "
                                "(SQLite) or --feedback_store redis://host:port", Code.FAILED_PRECONDITION)
