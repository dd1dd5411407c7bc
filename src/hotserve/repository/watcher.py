"""Watch a base path and report its complete versions whenever they change.

Local directories are watched with inotify (watchdog) so a publish is seen in milliseconds;
a poll every `poll_wait_seconds` backs it up (and is all there is where inotify is not, e.g.
object stores). Each cycle also runs the probes registered with it (the routing store's
change check), so one thread per model watches everything that lives beside the versions.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from hotserve.repository.scanner import ScanResult, VersionScanner
from hotserve.repository.storage import StorageUnavailable

log = logging.getLogger("hotserve.repository")

_READ_ONLY_EVENTS = frozenset({"opened", "closed_no_write", "accessed"})

# Writes arrive as bursts of events; waiting this long after the first one coalesces a burst.
_DEBOUNCE_SECONDS = 0.02
# While the store is unreachable the poll interval doubles per failed scan up to this (or the
# poll interval, if longer): a fleet does not hammer a struggling store, and recovery is seen
# within this long of it.
OUTAGE_MAX_BACKOFF_SECONDS = 30.0


class RepositoryWatcher:
    def __init__(
        self,
        scanner: VersionScanner,
        on_scan: Callable[[ScanResult], None],
        on_outage: Callable[[str], None],
        poll_wait_seconds: float = 1.0,
        use_inotify: bool = True,
        on_recovered: Callable[[], None] | None = None,
        on_deltas: Callable[[ScanResult], None] | None = None,
    ) -> None:
        self.scanner = scanner
        self.on_scan = on_scan
        self.on_outage = on_outage
        self.poll_wait_seconds = max(0.01, poll_wait_seconds)
        self.use_inotify = use_inotify and scanner.storage.local
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{scanner.model}", daemon=True)
        self._observer = None
        self._watched_ino: int | None = None
        self._last_key: tuple | None = None
        # New parameter-delta commits (ScanResult.delta_key) go to on_deltas, not on_scan: a delta
        # is a new revision of a loaded version, nothing for the planner.
        self.on_deltas = on_deltas
        self._last_delta_key: tuple = ()
        self._in_outage = False
        self._failures = 0  # consecutive failed scans
        self._scan_lock = threading.Lock()
        self.on_recovered = on_recovered
        self._probes: list[Callable[[], None]] = []
        # Paths inotify reported since the last scan (appended by watchdog's thread).
        self._touched: list[str] = []

    def add_probe(self, probe: Callable[[], None]) -> None:
        """Run probe() every cycle, after the scan (it must be cheap and must not raise)."""
        self._probes.append(probe)

    def wake(self) -> None:
        """Scan now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._unwatch()

    def scan_now(self) -> ScanResult:
        """Scan in the caller's thread (explicit load requests); raises StorageUnavailable."""
        with self._scan_lock:
            return self.scanner.scan()

    def _watch(self) -> None:
        """(Re)attach inotify to the base path, also after it was replaced by a new directory."""
        if not self.use_inotify:
            return
        try:
            ino = os.stat(self.scanner.base_path).st_ino
        except OSError:
            self._unwatch()
            return
        if self._observer is not None and ino == self._watched_ino:
            return
        self._unwatch()
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer

            wake = self._wake
            touched = self._touched

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, event) -> None:  # noqa: ANN001 - watchdog's type
                    # Reads (our own scans open manifests) change nothing; waking on them would
                    # make every scan trigger the next one.
                    if event.event_type not in _READ_ONLY_EVENTS:
                        touched.append(event.src_path)
                        dest = getattr(event, "dest_path", "")
                        if dest:
                            touched.append(dest)
                        wake.set()

            observer = Observer()
            observer.schedule(_Handler(), self.scanner.base_path, recursive=True)
            observer.daemon = True
            observer.start()
            self._observer, self._watched_ino = observer, ino
        except Exception as exc:  # inotify limits, unsupported filesystems: polling still works
            log.warning("model %s: cannot watch %s (%s); polling every %.2fs", self.scanner.model, self.scanner.base_path, exc, self.poll_wait_seconds)
            self._observer = None

    def _dirty_versions(self) -> set[int] | None:
        """The versions inotify saw change since the last scan; None when not watching (then
        the scanner checks each version with cheap stats instead)."""
        if self._observer is None:
            return None
        n = len(self._touched)  # watchdog's thread may append meanwhile: take only what is there
        touched = self._touched[:n]
        del self._touched[:n]
        base = self.scanner.base_path.rstrip(os.sep) + os.sep
        dirty = set()
        for path in touched:
            if path.startswith(base):
                first = path[len(base):].split(os.sep, 1)[0]
                if first.isdigit():
                    dirty.add(int(first))
        return dirty

    def _unwatch(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
            except Exception:
                pass
            self._observer = None
            self._watched_ino = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._watch()
            wait = self.poll_wait_seconds
            try:
                with self._scan_lock:
                    result = self.scanner.scan(dirty=self._dirty_versions())
            except StorageUnavailable as exc:
                self.scanner.invalidate()
                self._failures += 1
                if not self._in_outage:
                    self._in_outage = True
                    self.on_outage(str(exc))
                self._last_key = None
                wait = min(self.poll_wait_seconds * 2 ** (self._failures - 1),
                           max(self.poll_wait_seconds, OUTAGE_MAX_BACKOFF_SECONDS))
            except Exception:
                log.exception("model %s: scanning %s failed", self.scanner.model, self.scanner.base_path)
            else:
                self._failures = 0
                if self._in_outage:
                    self._in_outage = False
                    if self.on_recovered is not None:
                        self.on_recovered()
                # Probes (the routing store's change check) run before a new scan is handed on,
                # so routing intent written before a version was committed (hotserve optimize
                # --canary) is adopted before that version is acted on.
                for probe in self._probes:
                    try:
                        probe()
                    except Exception:
                        log.exception("model %s: watcher probe failed", self.scanner.model)
                key = result.key()
                if key != self._last_key:
                    self._last_key = key
                    self.on_scan(result)
                dkey = result.delta_key()
                if dkey != self._last_delta_key:
                    self._last_delta_key = dkey
                    if self.on_deltas is not None:
                        try:
                            self.on_deltas(result)
                        except Exception:
                            log.exception("model %s: following parameter deltas failed", self.scanner.model)
                if result.next_check_in is not None:
                    wait = min(wait, result.next_check_in + 0.005)
            if self._wake.wait(wait):
                time.sleep(_DEBOUNCE_SECONDS)
                self._wake.clear()
