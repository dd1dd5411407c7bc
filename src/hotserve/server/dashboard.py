"""The dashboard on the REST port: the page, its vendored assets, its live stream, its state.

    GET /dashboard                 the page (static HTML + JS, uPlot vendored: works offline)
    GET /dashboard/assets/<file>   the page's files
    GET /dashboard/state           every worker's models, versions, routing, memory (JSON)
    GET /dashboard/stream          server-sent events: `state`, `event` (the event bus), `tick`
                                   (per-second requests, errors, p50/p99 per version, memory
                                   per worker); `?after=N` skips bus events up to seq N

The stream is pushed, never polled: bus events and ticks reach the connection through an
asyncio queue fed with call_soon_threadsafe, so nothing waits on the event loop. With
--num_workers the worker a page lands on opens its siblings' feeds (server/peers.py), passes
their events and states on tagged with their worker, and merges their ticks second by second
(counts add up, percentiles from the merged histograms), so the page shows the whole server.
Admin actions on the page call /v1/admin/... with the token typed into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, AsyncIterator, Callable
from urllib.parse import parse_qs

from hotserve.errors import MethodNotAllowed, NotFound
from hotserve.observability import live
from hotserve.observability.events import BUS, EventBus, Record
from hotserve.server.http import Request
from hotserve.server.reply import Reply
from hotserve.server.peers import Peers, dumps

log = logging.getLogger("hotserve.dashboard")

ASSETS = os.path.join(os.path.dirname(__file__), "dashboard_assets")
_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
          ".css": b"text/css; charset=utf-8", ".txt": b"text/plain; charset=utf-8", ".png": b"image/png"}
# What a new page gets at once: the last events of each worker, the last ticks.
BACKLOG_EVENTS = 400
BACKLOG_SECONDS = 300
# A state message follows a burst of events after this long (coalesced), and at least this often.
STATE_DEBOUNCE = 0.2
STATE_EVERY = 5.0
# A second's tick is merged once every worker sent it, or this long after the first did.
TICK_MERGE_WAIT = 1.5
HEARTBEAT = 15.0
# How often a stream looks for siblings it does not follow yet (a restarted worker).
SIBLING_LOOK = 3.0
QUEUE_LIMIT = 2000


def _event_doc(record: Record, worker: str) -> dict[str, Any]:
    doc = record.to_dict()
    doc["type"] = "event"
    doc["worker"] = worker
    doc["level"] = logging.getLevelName(record.event.level).lower()
    return doc


async def local_feed(state: Callable[[], dict], worker: str, after: int = 0, bus: EventBus = BUS,
                     ticker: live.Ticker = live.TICKER, closing: asyncio.Event | None = None) -> AsyncIterator[dict]:
    """This worker's messages: hello, state, its backlog, then live events, ticks and states."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    overflow = False

    def put(item: tuple[str, Any]) -> None:  # on the loop
        nonlocal overflow
        if queue.qsize() < QUEUE_LIMIT:
            queue.put_nowait(item)
        else:
            overflow = True  # a consumer this slow gets a fresh state instead of every message

    unsub_bus = bus.subscribe(lambda r: loop.call_soon_threadsafe(put, ("event", r)))
    unsub_tick = ticker.subscribe(lambda t: loop.call_soon_threadsafe(put, ("tick", t)))
    try:
        yield {"type": "hello", "worker": worker, "last_seq": bus.last_seq}
        yield state()
        last_seq = after
        for r in bus.since(after)[-BACKLOG_EVENTS:]:
            last_seq = r.seq
            yield _event_doc(r, worker)
        for t in list(ticker.history)[-BACKLOG_SECONDS:]:
            yield {**t, "type": "tick", "worker": worker}
        state_due: float | None = None
        state_next = loop.time() + STATE_EVERY
        while closing is None or not closing.is_set():
            now = loop.time()
            due = min(state_next, state_due if state_due is not None else state_next)
            try:
                kind, item = await asyncio.wait_for(queue.get(), max(0.0, due - now))
            except asyncio.TimeoutError:
                state_due, state_next = None, loop.time() + STATE_EVERY
                yield state()
                continue
            if kind == "event":
                if item.seq <= last_seq:
                    continue  # already sent in the backlog
                last_seq = item.seq
                yield _event_doc(item, worker)
                if state_due is None:
                    state_due = loop.time() + STATE_DEBOUNCE
            else:
                yield {**item, "type": "tick", "worker": worker}
            if overflow:
                overflow = False
                yield state()
    finally:
        unsub_bus()
        unsub_tick()


class TickMerger:
    """Joins the workers' ticks of each second into one (counts add, percentiles re-derived)."""

    def __init__(self) -> None:
        self.pending: dict[int, dict[str, dict]] = {}
        self.first_seen: dict[int, float] = {}
        self.flushed_up_to = -1

    def add(self, tick: dict, now: float) -> None:
        t = tick["t"]
        if t <= self.flushed_up_to:
            return  # that second was already shown without this worker (it was late)
        self.pending.setdefault(t, {})[tick["worker"]] = tick
        self.first_seen.setdefault(t, now)

    def ready(self, workers: set[str], now: float) -> list[dict]:
        out = []
        for t in sorted(self.pending):
            got = self.pending[t]
            if not (workers <= set(got) or now - self.first_seen[t] >= TICK_MERGE_WAIT):
                break  # keep seconds in order
            out.append(self.merge(t, got))
            del self.pending[t]
            del self.first_seen[t]
            self.flushed_up_to = t
        return out

    @staticmethod
    def merge(t: int, ticks: dict[str, dict]) -> dict:
        parts: dict[str, list[dict]] = {}
        workers = {}
        inflight: dict[str, int] = {}
        for wid, tick in sorted(ticks.items()):
            for key, s in tick.get("series", {}).items():
                parts.setdefault(key, []).append(s)
            workers[wid] = {"rss": tick.get("rss"), "queue": tick.get("queue")}
            for key, n in (tick.get("inflight") or {}).items():
                inflight[key] = inflight.get(key, 0) + n
        series = {}
        for key, ps in parts.items():
            m = live.merge_series(ps)
            series[key] = {"n": m["n"], "err": m["err"], "p50": m["p50"], "p99": m["p99"]}
        return {"type": "tick", "t": t, "series": series, "workers": workers, "inflight": inflight}


def _sse(kind: str, doc: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps(doc) + b"\n\n"


class DashboardRoutes:
    def __init__(self, state: Callable[[], dict], worker: str, peers: Peers | None) -> None:
        self.state = state
        self.worker = worker
        self.peers = peers
        self.closing = asyncio.Event()
        self._files = {name for name in os.listdir(ASSETS) if not name.startswith(".")}

    def close(self) -> None:
        """Server shutdown: end every open stream so the connections can close."""
        self.closing.set()

    def feed(self, after: int) -> AsyncIterator[dict]:
        """This worker's feed (also what siblings read over the peer socket)."""
        return local_feed(self.state, self.worker, after, closing=self.closing)

    async def handle(self, request: Request) -> Reply:
        """Answer a /dashboard path (the event stream as a streamed reply)."""
        path = request.path
        if request.method != "GET":
            raise MethodNotAllowed(f"{path} takes GET")
        if path in ("/dashboard", "/dashboard/"):
            return self._file("index.html")
        if path.startswith("/dashboard/assets/"):
            return self._file(path[len("/dashboard/assets/"):])
        if path == "/dashboard/state":
            return Reply(200, dumps({"workers": await self.states()}))
        if path == "/dashboard/stream":
            params = parse_qs(request.query.decode("latin-1"))
            try:
                after = int(params.get("after", ["0"])[0])
            except ValueError:
                after = 0
            return Reply(200, b"", headers=[(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                                            (b"x-accel-buffering", b"no")], stream=self.stream(after))
        raise NotFound(f"no such dashboard path {path!r}; the page is at /dashboard")

    def _file(self, name: str) -> Reply:
        if name not in self._files:
            raise NotFound(f"no dashboard asset {name!r}")
        with open(os.path.join(ASSETS, name), "rb") as f:
            body = f.read()
        ctype = _TYPES.get(os.path.splitext(name)[1], b"application/octet-stream")
        return Reply(200, body, headers=[(b"content-type", ctype), (b"cache-control", b"no-cache")])

    async def states(self) -> list[dict]:
        own = self.state()
        if self.peers is None:
            return [own]
        others, _ = await self.peers.gather("state")
        return sorted([own, *others], key=lambda s: str(s.get("worker")))

    async def stream(self, after: int) -> AsyncIterator[bytes]:
        """Server-sent events: this worker's feed merged with its siblings'. The HTTP layer stops
        iterating (and closes this generator) when the client goes away."""
        merged: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_LIMIT)
        workers: set[str] = set()
        tasks: list[asyncio.Task] = []

        async def pump(source: AsyncIterator[dict]) -> None:
            wid = None
            try:
                async for msg in source:
                    if msg.get("type") == "hello":
                        wid = msg["worker"]
                        workers.add(wid)
                    await merged.put(msg)
            except (OSError, asyncio.TimeoutError, ValueError):
                pass  # a sibling went away: its worker drops out of the merge
            finally:
                if wid is not None:
                    workers.discard(wid)
                    with contextlib.suppress(asyncio.QueueFull):
                        merged.put_nowait({"type": "bye", "worker": wid})

        tasks.append(asyncio.create_task(pump(self.feed(after))))
        followed: dict[str, asyncio.Task] = {}

        def follow_siblings() -> None:
            # A sibling that (re)started since gets followed too: the page keeps covering every worker.
            for _, path in self.peers.siblings():
                if path not in followed or followed[path].done():
                    followed[path] = asyncio.create_task(pump(self.peers.stream(path, after)))
                    tasks.append(followed[path])

        closing = asyncio.create_task(self.closing.wait())
        merger = TickMerger()
        loop = asyncio.get_running_loop()
        next_look = 0.0
        try:
            while not closing.done():
                if self.peers is not None and loop.time() >= next_look:
                    follow_siblings()
                    next_look = loop.time() + SIBLING_LOOK

                getter = asyncio.create_task(merged.get())
                done, _ = await asyncio.wait({getter, closing}, timeout=min(HEARTBEAT, TICK_MERGE_WAIT),
                                             return_when=asyncio.FIRST_COMPLETED)
                out: list[bytes] = []
                got = getter.done() and not getter.cancelled()
                if got:
                    msg = getter.result()
                    if msg.get("type") == "tick":
                        merger.add(msg, loop.time())
                    else:
                        out.append(_sse(msg["type"], msg))
                else:
                    getter.cancel()
                for tick in merger.ready(workers, loop.time()):
                    out.append(_sse("tick", tick))
                if not out and not got:
                    out.append(b": keep-alive\n\n")
                if out:
                    yield b"".join(out)
        finally:
            for t in (*tasks, closing):
                t.cancel()
