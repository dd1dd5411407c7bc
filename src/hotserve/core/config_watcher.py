"""Reload --model_config_file when it changes (--model_config_file_poll_wait_seconds) or on
request. A file that fails to parse or validate is reported and the running config stays."""

from __future__ import annotations

import hashlib
import threading

from hotserve.core.config import ConfigError, load_config_file
from hotserve.core.manager import Manager
from hotserve.errors import InvalidArgument
from hotserve.observability.events import ConfigReloaded


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


class ConfigFileWatcher:
    def __init__(self, path: str, manager: Manager, poll_seconds: float = 0.0, apply_timeout: float = 60.0) -> None:
        self.path = path
        self.manager = manager
        self.bus = manager.bus
        self.poll_seconds = poll_seconds
        self.apply_timeout = apply_timeout
        self._seen = _digest(path)  # the config the server started with
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)

    def start(self) -> None:
        if self.poll_seconds > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def reload_now(self) -> dict:
        """Parse and apply the file now, waiting (bounded) for its models; for the admin API."""
        with self._lock:
            self._seen = _digest(self.path)
            try:
                models = load_config_file(self.path)
            except ConfigError as exc:
                self.bus.publish(ConfigReloaded("", "invalid", error=f"{self.path} is invalid: {exc}"))
                raise InvalidArgument(f"{self.path}: {exc}; the running config is unchanged") from None
            result = self.manager.apply_config(models, timeout=self.apply_timeout)
            self.bus.publish(ConfigReloaded("", "ok", tuple(m.name for m in models)))
            return {"models": result}

    def _run(self) -> None:
        unreadable = False
        while not self._stop.wait(self.poll_seconds):
            digest = _digest(self.path)
            if digest is None:
                if not unreadable:
                    unreadable = True
                    self.bus.publish(ConfigReloaded("", "unreadable", error=f"config file {self.path} is unreadable"))
                continue
            unreadable = False
            if digest == self._seen:
                continue
            with self._lock:
                self._seen = digest
                try:
                    models = load_config_file(self.path)
                except ConfigError as exc:
                    self.bus.publish(ConfigReloaded("", "invalid", error=f"config file {self.path} changed but is invalid ({exc})"))
                    continue
                try:
                    self.manager.apply_config(models)
                except Exception as exc:
                    self.bus.publish(ConfigReloaded("", "failed", error=f"applying config from {self.path} failed: {exc!r}"))
                    continue
                self.bus.publish(ConfigReloaded("", "ok", tuple(m.name for m in models)))
