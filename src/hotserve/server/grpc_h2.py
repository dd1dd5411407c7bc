"""The native gRPC front end: gRPC over HTTP/2 (h2c, prior knowledge) on the event loop,
serving the same method tables as grpc.aio (server/grpc_handlers.py).

Why: grpc.aio hands every call between gRPC's C-core threads and the event loop, ~47 us of loop
time a call here before any work, which held gRPC batch 1 at a third of REST. This front end
parses frames where the bytes arrive and, when the model runs inline (the same rule REST's fast
path follows), answers a unary call inside `data_received`: no task, no thread hop. Everything
else (a model that runs in its lane's threads, management calls, health Watch) runs in a task.

What it implements of HTTP/2 (RFC 9113) is what gRPC uses: the preface and SETTINGS, HEADERS +
CONTINUATION (HPACK decoded by `hpack`), DATA with padding, both directions' flow control,
PING, RST_STREAM, GOAWAY. It never sends PUSH_PROMISE and ignores PRIORITY. Answers are HPACK
encoded by a small HPACK encoder that indexes only the fields every answer repeats. gRPC: unary and server-streaming
calls, `grpc-timeout`, identity/gzip/deflate request messages, trailers-only errors.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import struct
import time
import zlib
from typing import Any

from hpack import Decoder
from hpack.exceptions import HPACKError

from hotserve.errors import Code, HotserveError
from hotserve.observability import tracing
from hotserve.server.context import ServerContext
from hotserve.server.grpc_handlers import (DEADLINE_FLAG, Method, Outcome, deadline_of, error_outcome, framed_outcome,
                                           plan_call, run_unary)

log = logging.getLogger("hotserve.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x0, 0x1, 0x3, 0x6, 0x9
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_INITIAL_WINDOW, S_MAX_FRAME = 1, 2, 4, 5

MAX_WINDOW = 2**31 - 1
MAX_FRAME = 2**24 - 1  # what we accept (the largest HTTP/2 allows): a big tensor arrives in few frames
DEFAULT_FRAME = 16_384
MAX_HEADER_BLOCK = 1 << 20  # request headers + metadata, all CONTINUATIONs included
_HEAD = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id
_MESSAGE = struct.Struct(">BI")  # gRPC: compressed flag, length
_CODES = {name: i for i, name in enumerate((  # gRPC's status codes, by the names grpc.StatusCode uses
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"))}
_SKIP_METADATA = frozenset(("te", "content-type", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"))
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, sid) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal field without indexing, new name, no Huffman: stateless on both sides."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _percent_encoded(message: str) -> bytes:
    """grpc-message: printable ASCII except '%' as is, everything else %XX of its UTF-8."""
    raw = message.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def _ascii(value: str) -> bytes:
    return value.encode("ascii", "replace")


_CONTENT_TYPE = (b"content-type", b"application/grpc")
_INDEXED_TRAILER_NAMES = frozenset(("x-model-version", "x-model-revision"))  # repeat call after call


class _Encoder:
    """HPACK for what we send: the fields every answer repeats (content-type, grpc-status 0, the
    version's metadata) go into the dynamic table once and are one byte after that, which is
    less for the client to read; everything else (ids, messages) is a literal, never indexed.
    A block must be sent in the order it was encoded: callers encode at send time."""

    DEFAULT = 4096

    def __init__(self) -> None:
        self.index: dict[tuple[bytes, bytes], int] = {}  # field -> its insertion number
        self.order: list[tuple[bytes, bytes]] = []  # oldest first (evicted from the front)
        self.inserted = 0
        self.size = 0
        self.max = self.DEFAULT
        self.resize: int | None = None  # a table size update owed at the start of the next block
        self.kept: dict[tuple, bytes] = {}  # (fields, table state) -> block: _kept

    def peer_table_size(self, value: int) -> None:
        new = min(value, self.DEFAULT)
        if new != self.max:
            self.max = new
            self.resize = new
            self._evict(0)

    def _evict(self, room: int) -> None:
        while self.order and self.size + room > self.max:
            old = self.order.pop(0)
            self.size -= 32 + len(old[0]) + len(old[1])
            del self.index[old]

    def field(self, name: bytes, value: bytes, indexed: bool) -> bytes:
        if not indexed:
            return _literal(name, value)
        key = (name, value)
        n = self.index.get(key)
        if n is not None:
            return _hpack_int(62 + self.inserted - n, 7, 0x80)  # the newest entry is 62
        size = 32 + len(name) + len(value)
        if size > self.max:
            return _literal(name, value)
        self._evict(size)
        self.inserted += 1
        self.index[key] = self.inserted
        self.order.append(key)
        self.size += size
        return b"\x40" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value

    def _start(self) -> bytes:
        if self.resize is None:
            return b""
        update, self.resize = _hpack_int(self.resize, 5, 0x20), None
        return update

    def headers(self) -> bytes:
        return self._kept(("headers",), self._headers)

    def status(self, code: str | None, message: str, trailing: tuple, start: bool = True) -> bytes:
        """Trailers: the repeating fields (status, the version's metadata) as a kept block, then
        the literals (message, request id, ...). Literals leave the table alone, so they need no
        place in the block's key: an id unique to every answer kept its block from being reused
        and churned the kept ones (an answer's header and trailer blocks with an id: 3.5-4.0 ->
        2.4-2.6 us; without one 0.67 -> 0.77 us, the loop below)."""
        if not message:
            for name, _ in trailing:
                if name not in _INDEXED_TRAILER_NAMES:
                    break
            else:  # the usual answer: nothing but repeating fields
                return self._kept((code, trailing, start), lambda: self._status(code, trailing, start))
        indexed, literals = [], []
        for field in trailing:  # the same rule as above: gRPC metadata names are lower-case already
            (indexed if field[0] in _INDEXED_TRAILER_NAMES else literals).append(field)
        indexed = tuple(indexed)
        parts = [self._kept((code, indexed, start), lambda: self._status(code, indexed, start))]
        if message:
            parts.append(_literal(b"grpc-message", _percent_encoded(message)))
        for name, value in literals:
            parts.append(_literal(name.lower().encode("ascii"), _ascii(str(value))))
        return b"".join(parts)

    def _kept(self, key: tuple, encode) -> bytes:
        """A block is a function of its fields and the table: kept until the table changes, as
        answers of one version repeat the same blocks."""
        key += (self.inserted, self.max)
        if self.resize is not None:
            return encode()  # starts with the size update, once
        block = self.kept.get(key)
        if block is not None:
            return block
        before = (self.inserted, self.max)
        block = encode()
        if (self.inserted, self.max) == before:
            if len(self.kept) >= 256:
                self.kept.clear()
            self.kept[key] = block
        return block

    def _headers(self) -> bytes:
        return self._start() + b"\x88" + self.field(*_CONTENT_TYPE, True)  # :status 200 is static entry 8

    def _status(self, code: str | None, indexed: tuple, start: bool) -> bytes:
        parts = [self._start() if start else b"", self.field(b"grpc-status", b"%d" % (_CODES[code] if code else 0), True)]
        for name, value in indexed:
            parts.append(self.field(name.lower().encode("ascii"), _ascii(str(value)), True))
        return b"".join(parts)


def parse_timeout(text: str) -> float | None:
    """grpc-timeout: up to 8 digits and a unit (H M S m u n), in seconds; None when malformed."""
    if 2 <= len(text) <= 9 and text[:-1].isdigit() and text[-1] in _TIMEOUT_UNITS:
        return int(text[:-1]) * _TIMEOUT_UNITS[text[-1]]
    return None


def _parsed(headers: list) -> tuple:
    """(path, metadata, timeout, encoding) of a request's headers."""
    path = None
    meta: dict[str, str] = {}
    timeout = None
    encoding = "identity"
    for name, value in headers:
        if name[0] == ":":
            if name == ":path":
                path = value
        elif name == "grpc-timeout":
            timeout = parse_timeout(value)
        elif name == "grpc-encoding":
            encoding = value
        elif name not in _SKIP_METADATA:
            meta[name] = value
    return path, meta, timeout, encoding


class _Stream:
    __slots__ = ("sid", "headers", "block", "body", "ended", "send_window", "out", "trailers", "task", "reset")

    def __init__(self, sid: int, send_window: int) -> None:
        self.sid = sid
        self.headers: tuple | None = None  # (path, metadata, timeout, encoding): _parsed
        self.block = bytearray()  # a header block waiting for its CONTINUATIONs
        self.body: list[bytes] = []  # DATA payloads
        self.ended = False
        self.send_window = send_window
        self.out = b""  # DATA payload still to send (flow control)
        self.trailers: tuple | None = None  # (code, message, metadata): sent (and encoded) once `out` is empty
        self.task: asyncio.Task | None = None
        self.reset = False


class _ProtocolError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Connection(asyncio.Protocol):
    def __init__(self, server: "H2GrpcServer") -> None:
        self.server = server
        self.ctx = server.ctx
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface = False
        self.decoder = Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_BLOCK
        self.blocks: dict[bytes, tuple[int, tuple]] = {}  # header block -> (table state, _parsed(...)): _decode
        self.table_state = 0
        self.enc = _Encoder()
        self.streams: dict[int, _Stream] = {}
        self.last_sid = 0
        self.continuing: _Stream | None = None  # a header block is open: only CONTINUATION may follow
        self.peer_window = 65_535  # the peer's initial stream window (its SETTINGS)
        self.peer_frame = DEFAULT_FRAME
        self.conn_send = 65_535
        self.received = 0  # DATA bytes since we last opened the connection's receive window again
        self.goaway = False
        self.closed = False

    # -- connection ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        settings = struct.pack(">HIHIHI", S_ENABLE_PUSH, 0, S_INITIAL_WINDOW, MAX_WINDOW, S_MAX_FRAME, MAX_FRAME)
        self.transport.write(_frame(SETTINGS, 0, 0, settings) + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65_535)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for st in self.streams.values():
            st.reset = True
            if st.task is not None:
                st.task.cancel()
        self.streams.clear()
        self.server.idle.set()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        try:
            if not self.preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise _ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC needs h2c)")
                    return
                if buf[:len(PREFACE)] != PREFACE:
                    raise _ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC needs h2c)")
                del buf[:len(PREFACE)]
                self.preface = True
            pos, end = 0, len(buf)
            while end - pos >= 9:
                hi, lo, kind, flags, sid = _HEAD.unpack_from(buf, pos)
                length = (hi << 16) | lo
                if length > MAX_FRAME:
                    raise _ProtocolError(FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {MAX_FRAME}")
                if end - pos - 9 < length:
                    break
                payload = bytes(buf[pos + 9:pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, sid & 0x7FFF_FFFF, payload)
                if self.closed:
                    return
            del buf[:pos]
        except _ProtocolError as exc:
            self._fail(exc.code, str(exc))
        except HPACKError as exc:
            self._fail(COMPRESSION_ERROR, f"header block: {exc}")

    def _fail(self, code: int, message: str) -> None:
        log.info("gRPC connection closed: %s", message)
        if self.transport is not None and not self.closed:
            self.transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", self.last_sid, code) + message.encode()[:200]))
            self.transport.close()
        self.closed = True

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            raise _ProtocolError(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            st = self.continuing
            if st is None or st.sid != sid:
                raise _ProtocolError(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
            self._block(st, payload, flags)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise _ProtocolError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a wrong size")
            inc = struct.unpack(">I", payload)[0] & 0x7FFF_FFFF
            if sid == 0:
                self.conn_send += inc
                for st in list(self.streams.values()):
                    self._pump(st)
            else:
                st = self.streams.get(sid)
                if st is not None:
                    st.send_window += inc
                    self._pump(st)
        elif kind == PING:
            if not flags & ACK:
                self.transport.write(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            st = self.streams.pop(sid, None)
            if st is not None:
                st.reset = True
                if st.task is not None:
                    st.task.cancel()
        elif kind == GOAWAY:
            self.goaway = True
            if not self.streams and self.transport is not None:
                self.transport.close()
        # PRIORITY, PUSH_PROMISE (a client never sends it) and unknown types are ignored.

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ProtocolError(FRAME_SIZE_ERROR, "SETTINGS of a wrong size")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == S_INITIAL_WINDOW:
                if value > MAX_WINDOW:
                    raise _ProtocolError(FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.peer_window = value - self.peer_window, value
                for st in self.streams.values():
                    st.send_window += delta
            elif key == S_MAX_FRAME:
                self.peer_frame = value
            elif key == S_HEADER_TABLE_SIZE:
                self.enc.peer_table_size(value)
        self.transport.write(_frame(SETTINGS, ACK, 0))
        for st in list(self.streams.values()):
            self._pump(st)

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if flags & PADDED:
            pad = payload[0]
            payload = payload[1:len(payload) - pad]
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        st = self.streams.get(sid)
        if st is None:
            if sid % 2 == 0 or sid <= self.last_sid:
                raise _ProtocolError(PROTOCOL_ERROR, f"stream {sid}: a client opens odd, increasing stream ids")
            self.last_sid = sid
            st = self.streams[sid] = _Stream(sid, self.peer_window)
        if flags & END_STREAM:
            st.ended = True
        self._block(st, payload, flags)

    def _block(self, st: _Stream, fragment: bytes, flags: int) -> None:
        if flags & END_HEADERS and not st.block:
            block = fragment
        else:
            st.block += fragment
            if len(st.block) > MAX_HEADER_BLOCK:
                raise _ProtocolError(PROTOCOL_ERROR, f"header block over {MAX_HEADER_BLOCK} bytes")
            if not flags & END_HEADERS:
                self.continuing = st
                return
            block, st.block = bytes(st.block), bytearray()
        self.continuing = None
        parsed = self._decode(block)
        if st.headers is None:
            st.headers = parsed
        if st.ended:
            self._call(st)

    def _decode(self, block: bytes) -> tuple:
        """HPACK-decode a header block into (path, metadata, timeout, encoding). A client repeats
        the same block call after call (the same method, metadata and indexed entries): a block
        that left the dynamic table as it was decodes the same while the table stays the same,
        so its result is kept per table state (`hpack` is pure Python: decoding every block was
        a tenth of a call). The metadata dict is shared by those calls: handlers only read it."""
        hit = self.blocks.get(block)
        if hit is not None and hit[0] == self.table_state:
            return hit[1]
        table = self.decoder.header_table
        before = (len(table.dynamic_entries), table.dynamic_entries[0] if table.dynamic_entries else None, table.maxsize)
        parsed = _parsed(self.decoder.decode(block))
        if (len(table.dynamic_entries), table.dynamic_entries[0] if table.dynamic_entries else None,
                table.maxsize) != before:
            self.table_state += 1  # entries moved: every block kept so far may now mean something else
            self.blocks.clear()
        elif len(self.blocks) < 64:
            self.blocks[block] = (self.table_state, parsed)
        return parsed

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        self.received += len(payload)
        if self.received > MAX_WINDOW // 2:
            self.transport.write(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        if flags & PADDED:
            pad = payload[0]
            payload = payload[1:len(payload) - pad]
        st = self.streams.get(sid)
        if st is None or st.ended:
            return  # a stream we reset or finished: its flow-controlled bytes are counted above
        st.body.append(payload)
        if flags & END_STREAM:
            st.ended = True
            self._call(st)

    # -- calls ---------------------------------------------------------------------------------
    def _call(self, st: _Stream) -> None:
        path, meta, timeout, encoding = st.headers or (None, {}, None, "identity")
        m = self.server.methods.get(path)
        if m is None:
            return self._answer(st, Outcome(code="UNIMPLEMENTED", message=f"method {path} is not served here"), None)
        body = st.body[0] if len(st.body) == 1 else b"".join(st.body)
        st.body = []
        try:
            request = self._message(body, encoding, m)
        except HotserveError as exc:
            return self._answer(st, Outcome(code=exc.code.value, message=exc.message), m)
        size = len(body)
        if m.kind == "framed":
            planned = plan_call(self.ctx, m, request, meta, size)
            if isinstance(planned, Outcome):
                return self._answer(st, planned, m)
            call = planned[0]
            mm = self.ctx.manager.models.get(call.model)
            if not tracing.ENABLED and (mm is None or mm.runs_inline(call.size)):
                # A measured-cheap model and a small request: answered here, as REST's fast path does.
                return self._answer(st, framed_outcome(self.ctx.frame.run_sync(*planned)), m)
            st.task = asyncio.ensure_future(self._framed(st, m, planned, timeout, time.monotonic()))
        elif m.kind == "unary":
            st.task = asyncio.ensure_future(self._unary(st, m, request, meta))
        else:
            st.task = asyncio.ensure_future(self._stream(st, m, request, meta))

    def _message(self, body: bytes, encoding: str, m: Method) -> Any:
        if len(body) < 5:
            raise HotserveError("the call carries no gRPC message", Code.INTERNAL)
        flag, n = _MESSAGE.unpack_from(body, 0)
        if len(body) != 5 + n:
            raise HotserveError(f"expected one gRPC message of {n} bytes, got {len(body) - 5} bytes", Code.INTERNAL)
        payload = memoryview(body)[5:]
        if flag:
            try:
                if encoding == "gzip":
                    payload = gzip.decompress(payload)
                elif encoding == "deflate":
                    payload = zlib.decompress(payload)
                else:
                    raise HotserveError(f"grpc-encoding {encoding!r} is not supported; send identity, gzip or deflate",
                                        Code.UNIMPLEMENTED)
            except (OSError, zlib.error, EOFError) as exc:
                raise HotserveError(f"the compressed ({encoding}) message does not decompress: {exc}",
                                    Code.INTERNAL) from None
        try:
            return m.req_cls.FromString(payload)
        except Exception as exc:
            raise HotserveError(f"the request is not a {m.req_cls.DESCRIPTOR.full_name}: {exc}",
                                Code.INTERNAL) from None

    async def _framed(self, st: _Stream, m: Method, planned, timeout: float | None, received: float) -> None:
        remaining = None if timeout is None else timeout - (time.monotonic() - received)
        done = await self.ctx.frame.run(*planned, deadline_of(self.ctx, remaining), DEADLINE_FLAG)
        self._answer(st, framed_outcome(done), m)

    async def _unary(self, st: _Stream, m: Method, request: Any, meta: dict) -> None:
        self._answer(st, await run_unary(self.ctx, m, request, meta), m)

    async def _stream(self, st: _Stream, m: Method, request: Any, meta: dict) -> None:
        self.transport.write(self._header_frames(st.sid, self.enc.headers(), False))
        out = Outcome()
        try:
            async for resp in m.fn(request, meta):
                msg = resp.SerializeToString()
                st.out += _MESSAGE.pack(0, len(msg)) + msg
                self._pump(st)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            out = error_outcome(exc, m.fn)
        st.trailers = (out.code, out.message, out.trailing)
        self._pump(st)

    def _answer(self, st: _Stream, out: Outcome, m: Method | None) -> None:
        if st.reset or self.closed:
            return
        if out.code is None:
            msg = out.value.SerializeToString()
            st.out = _MESSAGE.pack(0, len(msg)) + msg
            st.trailers = (None, "", out.trailing)
            head = self._header_frames(st.sid, self.enc.headers(), False)
            if len(st.out) <= min(st.send_window, self.conn_send, self.peer_frame):  # all of it, one write
                n = len(st.out)
                st.send_window -= n
                self.conn_send -= n
                self.transport.write(head + _frame(DATA, 0, st.sid, st.out)
                                     + self._header_frames(st.sid, self.enc.status(*st.trailers), True))
                self._finish(st)
                return
            self.transport.write(head)
            self._pump(st)
            return
        # Trailers-only: an error is one HEADERS frame that ends the stream.
        block = self.enc.headers() + self.enc.status(out.code, out.message, out.trailing, start=False)
        self.transport.write(self._header_frames(st.sid, block, True))
        self._finish(st)

    def _header_frames(self, sid: int, block: bytes, end_stream: bool) -> bytes:
        flags = END_STREAM if end_stream else 0
        limit = self.peer_frame
        if len(block) <= limit:
            return _frame(HEADERS, flags | END_HEADERS, sid, block)
        parts = [_frame(HEADERS, flags, sid, block[:limit])]
        for i in range(limit, len(block), limit):
            last = i + limit >= len(block)
            parts.append(_frame(CONTINUATION, END_HEADERS if last else 0, sid, block[i:i + limit]))
        return b"".join(parts)

    def _pump(self, st: _Stream) -> None:
        """Send what flow control allows of the stream's DATA, then its trailers."""
        if st.reset or self.closed:
            return
        while st.out:
            n = min(len(st.out), st.send_window, self.conn_send, self.peer_frame)
            if n <= 0:
                return  # a WINDOW_UPDATE or SETTINGS calls this again
            self.transport.write(_frame(DATA, 0, st.sid, st.out[:n]))
            st.out = st.out[n:]
            st.send_window -= n
            self.conn_send -= n
        if st.trailers is not None:
            self.transport.write(self._header_frames(st.sid, self.enc.status(*st.trailers), True))
            st.trailers = None
            self._finish(st)

    def _finish(self, st: _Stream) -> None:
        self.streams.pop(st.sid, None)
        if not self.streams:
            self.server.idle.set()
            if self.goaway and self.transport is not None:
                self.transport.close()


class H2GrpcServer:
    """The native gRPC server: start() binds and returns the port, stop(grace) lets calls in
    flight finish (GOAWAY to every connection), then closes."""

    def __init__(self, ctx: ServerContext, host: str, port: int, reuse_port: bool = False,
                 services: dict[str, dict[str, Method]] | None = None) -> None:
        from hotserve.server.grpc_services import services as all_services

        self.ctx = ctx
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.methods = {f"/{service}/{name}": m
                        for service, methods in (services or all_services(ctx)).items() for name, m in methods.items()}
        self.connections: set[_Connection] = set()
        self.idle = asyncio.Event()
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), self.host, self.port,
                                               reuse_port=self.reuse_port or None, backlog=1024)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 5.0) -> None:
        if self.server is None:
            return
        self.server.close()
        for conn in list(self.connections):
            conn.goaway = True
            if conn.transport is not None and not conn.closed:
                conn.transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", conn.last_sid, NO_ERROR)))
                if not conn.streams:
                    conn.transport.close()
        deadline = time.monotonic() + grace
        while any(c.streams for c in self.connections) and time.monotonic() < deadline:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await self.server.wait_closed()
