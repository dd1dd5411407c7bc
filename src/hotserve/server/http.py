"""The HTTP/1.1 server: an asyncio protocol over httptools (llhttp, the parser uvicorn and
Node.js use), with the limits and timeouts a server facing the internet needs.

Why not uvicorn: measured in bench/http_server.py, this protocol costs less event-loop time per
request (no ASGI scope dicts, no receive/send round trips), and uvicorn has no header-read
timeout (slowloris connections stay open forever) and no header size or count limit with
httptools. What is enforced here, before the application sees a byte:

- request line + headers: at most `max_header_bytes` in total and `max_headers` lines -> 431;
  they must arrive within `header_timeout` of the request's first byte -> 408 and close;
- body: a Content-Length over `max_body_bytes` is refused at once (413, nothing read), a
  chunked body is counted as it arrives (413 past the limit); the whole body must arrive within
  `body_timeout` of the headers -> 408;
- idle keep-alive connections close after `keep_alive_timeout`;
- malformed requests (including request smuggling: Content-Length with Transfer-Encoding) -> 400.

Pipelined requests are answered in order, one at a time; reading pauses while a request is
handled so a client cannot queue unbounded work on one connection. `Expect: 100-continue` is
answered once the headers passed the limits. A reply may stream (chunked transfer encoding),
for server-sent events.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import unquote

import httptools

log = logging.getLogger("hotserve.http")

_REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout",
}
# How often the server looks for connections past their deadline.
SWEEP_SECONDS = 0.25

_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 << 20
    max_header_bytes: int = 64 << 10
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 30.0


class Request:
    """One parsed request. Header names are lower-case bytes, values latin-1 bytes."""

    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive")

    def __init__(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                 keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    def header(self, name: bytes) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("latin-1")
        return None


class Response:
    """What a handler answers: status, headers (each (name, value) bytes), and a body or a
    stream; `close` ends the connection after it (a draining server)."""

    __slots__ = ("status", "headers", "body", "stream", "close")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                 stream: AsyncIterator[bytes] | None = None, close: bool = False) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream
        self.close = close


Handler = Callable[[Request], Awaitable[Response]]
# Optional synchronous handler (handler.fast): an answer computed without awaiting anything,
# or None to take the async path. Saves a task per request for cheap, inline work.
FastHandler = Callable[[Request], "Response | None"]
# Called for requests refused by the protocol itself (status, message) -> response body bytes.
ErrorBody = Callable[[int, str], bytes]


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, limits: Limits, error_body: ErrorBody,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.error_body = error_body
        self.on_reject = on_reject
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request] = deque()
        self.task: asyncio.Task | None = None
        self.closing = False
        # One deadline per connection, checked by the server's sweep (HttpServer) a few times a
        # second: no timer object is made or cancelled per request.
        self.deadline: float | None = None
        self._on_deadline: Callable[[], None] | None = None
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self.on_lost: Callable[["HttpProtocol"], None] | None = None
        self._fast: FastHandler | None = getattr(handler, "fast", None)
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._in_message = False
        self._headers_done = False

    # -- connection ---------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self._arm(self.limits.keep_alive_timeout, self._idle_timeout)

    def connection_lost(self, exc) -> None:
        if self.on_lost is not None:
            self.on_lost(self)
        self.closing = True
        self._disarm()
        self._write_ready.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        self._write_ready.clear()

    def resume_writing(self) -> None:
        self._write_ready.set()

    def _arm(self, seconds: float, fn: Callable[[], None]) -> None:
        if seconds > 0:
            self.deadline, self._on_deadline = self.loop.time() + seconds, fn
        else:
            self.deadline = None

    def _disarm(self) -> None:
        self.deadline = None

    def check_deadline(self, now: float) -> None:
        """Called by the server's sweep: act on a passed deadline (idle or a slow request)."""
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            self._on_deadline()

    def _idle_timeout(self) -> None:
        if not self._in_message and self.task is None and self.transport is not None:
            self.transport.close()

    def _request_timeout(self) -> None:
        what = "request body" if self._headers_done else "request headers"
        limit = self.limits.body_timeout if self._headers_done else self.limits.header_timeout
        self._refuse(408, f"{what} did not arrive within {limit:g}s", "read_timeout")

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                reason = {431: "header_limit", 414: "header_limit", 413: "body_limit"}.get(refused.status, "bad_request")
                self._refuse(refused.status, str(refused), reason)
            else:
                log.error("HTTP parser callback failed: %r", refused)
                self._refuse(500, "internal error while reading the request", "internal")
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported", "bad_request")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}", "bad_request")

    def _refuse(self, status: int, message: str, reason: str) -> None:
        """Answer an error the protocol found and close: the stream's framing cannot be trusted."""
        if self.closing or self.transport is None:
            return
        if self.on_reject is not None:
            self.on_reject(reason)
        body = self.error_body(status, message)
        self.transport.write(_STATUS_LINES.get(status, f"HTTP/1.1 {status} Error\r\n".encode())
                             + b"content-type: application/json\r\nconnection: close\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.closing = True
        self._disarm()
        self.transport.close()

    # -- parser callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self._in_message = True
        self._arm(self.limits.header_timeout, self._request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Refused(431 if len(self._url) <= self.limits.max_header_bytes else 414,
                           f"request line and headers exceed {self.limits.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Refused(431, f"request headers exceed {self.limits.max_header_bytes} bytes "
                                "(--rest_api_max_header_bytes)")
        if len(self._headers) >= self.limits.max_headers:
            raise _Refused(431, f"more than {self.limits.max_headers} request headers (--rest_api_max_headers)")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._arm(self.limits.body_timeout, self._request_timeout)
        length = None
        expect = False
        for k, v in self._headers:
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    raise _Refused(400, "Content-Length is not a number") from None
            elif k == b"expect" and v.lower() == b"100-continue":
                expect = True
        if length is not None and length > self.limits.max_body_bytes:
            raise _Refused(413, f"request body is {length} bytes; the limit is {self.limits.max_body_bytes} bytes "
                                "(--rest_api_max_body_bytes)")
        if expect and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body_bytes:
            raise _Refused(413, f"request body exceeds the limit of {self.limits.max_body_bytes} bytes "
                                "(--rest_api_max_body_bytes)")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_message = False
        path, _, query = self._url.partition(b"?")
        try:
            path_text = httptools.parse_url(self._url).path.decode("utf-8") if self._url[:1] != b"/" else path.decode("utf-8")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            raise _Refused(400, "the request target is not a valid URL") from None
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(self.parser.get_method().decode("ascii"), unquote(path_text), query, self._headers, body,
                          self.parser.should_keep_alive())
        if self.task is None and not self.queue and self._fast is not None:
            response = self._fast(request)
            if response is not None and response.stream is None:
                keep = request.keep_alive and not self.closing and not response.close
                self._write_plain(request, response, keep)
                if not keep:
                    self.closing = True
                    self.transport.close()
                else:
                    self._arm(self.limits.keep_alive_timeout, self._idle_timeout)
                return
        self.queue.append(request)
        if self.task is None:
            self.transport.pause_reading()
            self.task = self.loop.create_task(self._serve())

    # -- handling -----------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while self.queue and not self.closing:
                request = self.queue.popleft()
                try:
                    response = await self.handler(request)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug must cost one request, never the connection's loop
                    log.exception("unhandled error on %s %s", request.method, request.path)
                    response = Response(500, [(b"content-type", b"application/json")],
                                        self.error_body(500, f"internal error: {type(exc).__name__}: {exc}"))
                keep = request.keep_alive and not self.closing and not response.close
                await self._write(request, response, keep)
                if not keep:
                    self.closing = True
                    self.transport.close()
                    return
        except asyncio.CancelledError:
            return
        finally:
            self.task = None
        if not self.closing:
            self._arm(self.limits.keep_alive_timeout, self._idle_timeout)
            self.transport.resume_reading()

    def _write_plain(self, request: Request, response: Response, keep: bool) -> None:
        head = [_STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} Status\r\n".encode()]
        for k, v in response.headers:
            head.append(k + b": " + v + b"\r\n")
        if not keep:
            head.append(b"connection: close\r\n")
        body = b"" if request.method == "HEAD" else response.body
        head.append(b"content-length: " + str(len(response.body)).encode() + b"\r\n\r\n")
        head.append(body)
        self.transport.write(b"".join(head))

    async def _write(self, request: Request, response: Response, keep: bool) -> None:
        if response.stream is None:
            self._write_plain(request, response, keep)
            return
        head = [_STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} Status\r\n".encode()]
        for k, v in response.headers:
            head.append(k + b": " + v + b"\r\n")
        if not keep:
            head.append(b"connection: close\r\n")
        head.append(b"transfer-encoding: chunked\r\n\r\n")
        self.transport.write(b"".join(head))
        try:
            async for chunk in response.stream:
                if self.closing:
                    break
                if chunk:
                    self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await self._write_ready.wait()
            if not self.closing:
                self.transport.write(b"0\r\n\r\n")
        finally:
            close = getattr(response.stream, "aclose", None)
            if close is not None:
                await close()


class HttpServer:
    """The listening socket and its connections, for a graceful stop."""

    def __init__(self, handler: Handler, limits: Limits, error_body: ErrorBody,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.error_body = error_body
        self.on_reject = on_reject
        self.connections: set[HttpProtocol] = set()
        self.server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def _protocol(self) -> HttpProtocol:
        proto = HttpProtocol(self.handler, self.limits, self.error_body, self.on_reject)
        self.connections.add(proto)
        proto.on_lost = self.connections.discard
        return proto

    async def start(self, sock) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, sock=sock, backlog=2048)
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        """Close connections past their deadline (a timeout is late by at most SWEEP_SECONDS)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for proto in list(self.connections):
            if proto.deadline is not None and now >= proto.deadline:
                proto.check_deadline(now)
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, close idle connections, let requests in progress finish (up to
        `grace` seconds), then close everything."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            for proto in list(self.connections):
                if proto.task is None and not proto._in_message and proto.transport is not None:
                    proto.closing = True
                    proto.transport.close()
            busy = [p for p in self.connections if p.task is not None or p._in_message]
            if not busy or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for proto in list(self.connections):
            if proto.transport is not None:
                proto.transport.close()
