"""--num_workers: the private channel between sibling workers, so one answer covers them all.

Each worker listens on a unix socket `worker-<id>.sock` in a directory only the supervisor's
user can enter (created by the supervisor, passed in HOTSERVE_PEER_DIR). The worker that a
scrape or a dashboard lands on asks its siblings there; nothing crosses processes on the
request path. One line asks, the answer follows and the connection closes:

    metrics\\n   -> JSON {metric name: [sample lines with worker="<id>"]}   (metrics.Registry.families)
    state\\n     -> JSON: the worker's models, versions, routing and memory (the dashboard's state)
    stream N\\n  -> newline-delimited JSON messages, open-ended: the worker's events after bus
                   sequence N, its per-second ticks and state changes (the dashboard's feed)

A sibling that does not answer within a second (restarting, stuck) is left out and counted
in hotserve_scrape_workers{state="missing"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
from typing import Any, AsyncIterator, Callable

import orjson

from hotserve import envvars
from hotserve.observability import metrics

log = logging.getLogger("hotserve.peers")

ASK_TIMEOUT = 1.0
_DUMPS_OPTS = orjson.OPT_NON_STR_KEYS
# The scrape-coverage gauge describes the scrape being answered, not a sibling's last one.
_LOCAL_ONLY = {metrics.SCRAPE_WORKERS.name}

Feed = Callable[[int], AsyncIterator[dict]]


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc, default=str, option=_DUMPS_OPTS)


def socket_path(directory: str, worker: str) -> str:
    return os.path.join(directory, f"worker-{worker}.sock")


class PeerServer:
    """This worker's side: answers its siblings' questions."""

    def __init__(self, directory: str, worker: str, state: Callable[[], dict], feed: Feed | None = None) -> None:
        self.path = socket_path(directory, worker)
        self.worker = worker
        self.state = state
        self.feed = feed
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a previous incarnation of this worker
        self._server = await asyncio.start_unix_server(self._handle, self.path)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            words = line.decode("ascii", "replace").split()
            cmd = words[0] if words else ""
            if cmd == "metrics":
                fams = metrics.REGISTRY.families(metrics.worker_label())
                writer.write(dumps({k: v for k, v in fams.items() if k not in _LOCAL_ONLY}))
            elif cmd == "state":
                writer.write(dumps(self.state()))
            elif cmd == "stream" and self.feed is not None:
                after = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
                async for msg in self.feed(after):
                    writer.write(dumps(msg) + b"\n")
                    await writer.drain()
            else:
                writer.write(dumps({"error": f"unknown peer command {line!r}"}))
            await writer.drain()
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("peer request failed")
        finally:
            self._writers.discard(writer)
            writer.close()


class Peers:
    """The asking side: this worker's view of its siblings."""

    def __init__(self, directory: str, me: str) -> None:
        self.directory = directory
        self.me = me

    def siblings(self) -> list[tuple[str, str]]:
        """(worker id, socket path) of every other worker that has a socket."""
        out = []
        for path in sorted(glob.glob(os.path.join(self.directory, "worker-*.sock"))):
            wid = os.path.basename(path)[len("worker-"):-len(".sock")]
            if wid != self.me:
                out.append((wid, path))
        return out

    async def ask(self, path: str, command: str, timeout: float = ASK_TIMEOUT) -> Any:
        async def go() -> Any:
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(command.encode() + b"\n")
                await writer.drain()
                return orjson.loads(await reader.read())
            finally:
                writer.close()

        return await asyncio.wait_for(go(), timeout)

    async def gather(self, command: str) -> tuple[list[Any], list[str]]:
        """Every sibling's answer to `command`, and the ids of those that did not answer."""
        sibs = self.siblings()
        answers = await asyncio.gather(*(self.ask(p, command) for _, p in sibs), return_exceptions=True)
        got, missing = [], []
        for (wid, _), a in zip(sibs, answers):
            if isinstance(a, BaseException):
                missing.append(wid)
            else:
                got.append(a)
        return got, missing

    async def render_metrics(self) -> bytes:
        """One scrape for the whole server: this worker's series and every sibling's."""
        fams, missing = await self.gather("metrics")
        metrics.SCRAPE_WORKERS.set(("answered",), 1 + len(fams))
        metrics.SCRAPE_WORKERS.set(("missing",), len(missing))
        return metrics.REGISTRY.render(metrics.worker_label(), fams)

    async def stream(self, path: str, after: int = 0) -> AsyncIterator[dict]:
        """A sibling's feed, message by message, until it closes."""
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=2**24), ASK_TIMEOUT)
        try:
            writer.write(f"stream {after}\n".encode())
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    return
                yield orjson.loads(line)
        finally:
            writer.close()


def from_env(worker: int | str | None) -> Peers | None:
    directory = os.environ.get(envvars.PEER_DIR)
    if worker is None or not directory:
        return None
    return Peers(directory, str(worker))
