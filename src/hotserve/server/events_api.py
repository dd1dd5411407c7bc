"""GET /v1/events: the event bus over HTTP, for operators, tools, tests and the dashboard.

`?after=N` returns the events after sequence number N (the bus keeps the last few thousand);
`&wait=S` long-polls up to S seconds (at most 30) for the first one when there is none yet;
`&model=m` and `&kind=k1,k2` filter. The answer is {"events": [...], "last": seq, "worker": w}:
pass `last` as the next `after`. With --num_workers each worker has its own bus and sequence
numbers, so the answer names the worker that gave it (a keep-alive connection stays with one);
the dashboard is the view that merges every worker's events.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import orjson

from hotserve.errors import InvalidArgument
from hotserve.observability.events import EventBus, Record
from hotserve.server.reply import Reply

MAX_WAIT_SECONDS = 30.0


def _number(params: dict, key: str, default: float) -> float:
    raw = params.get(key, [None])[0]
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"query parameter {key!r} must be a number, got {raw!r}") from None
    if value < 0:
        raise InvalidArgument(f"query parameter {key!r} must be >= 0, got {raw!r}")
    return value


async def wait_for_records(bus: EventBus, after: int, timeout: float) -> None:
    """Return once the bus holds a record after `after`, or timeout passed; never blocks the loop."""
    if bus.last_seq > after or timeout <= 0:
        return
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()

    def on_event(record: Record) -> None:
        loop.call_soon_threadsafe(arrived.set)

    unsubscribe = bus.subscribe(on_event)
    try:
        if bus.last_seq > after:
            return
        try:
            await asyncio.wait_for(arrived.wait(), timeout)
        except asyncio.TimeoutError:
            pass
    finally:
        unsubscribe()


async def events_reply(bus: EventBus, query: bytes, worker: str = "0") -> Reply:
    params = parse_qs(query.decode("latin-1"))
    after = int(_number(params, "after", 0))
    if after >= 1 << 53:
        raise InvalidArgument(f"query parameter 'after' is a sequence number below 2**53, got {after}")
    wait = min(_number(params, "wait", 0), MAX_WAIT_SECONDS)
    model = params.get("model", [None])[0]
    kinds = [k for k in ",".join(params.get("kind", [])).split(",") if k] or None
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        records = bus.since(after, model, kinds)
        last = bus.last_seq
        remaining = deadline - asyncio.get_running_loop().time()
        if records or remaining <= 0:
            break
        await wait_for_records(bus, max(after, last), remaining)
        after = max(after, last)
    return Reply(200, orjson.dumps({"events": [r.to_dict() for r in records], "last": max(after, last),
                                       "worker": worker}))
