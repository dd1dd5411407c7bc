"""What every front end (REST and gRPC) shares: the manager, the request frame, the worker
pool for management calls, the admin token, and the bounds that apply."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from hotserve.core.manager import Manager
from hotserve.server.admission import AdmissionOptions
from hotserve.server.auth import AdminAuth
from hotserve.server.frame import RequestFrame


@dataclass
class ServerContext:
    manager: Manager
    frame: RequestFrame
    executor: ThreadPoolExecutor
    auth: AdminAuth
    timeout_seconds: float = 30.0  # --rest_api_timeout_in_ms
    reload_timeout_seconds: float = 60.0
    reload_config: Callable[[], dict] | None = None  # set when serving from --model_config_file
    learning: Any = None  # learning.service.LearningService when a feedback store is configured
    worker: str = "0"  # this process's worker id (--num_workers), for the dashboard
    peers: Any = None  # server.peers.Peers with --num_workers: the siblings a scrape or the dashboard asks
    serving_shape: dict = field(default_factory=dict)  # server/shape.py's choice (GET /v1/models/<m>/metadata)
    # Set on SIGTERM: readiness fails at once while requests are still served (--drain_seconds).
    draining: bool = False

    def ready(self) -> bool:
        """Readiness (/readyz, /v2/health/ready, gRPC health '', a fleet member's `ready`): every
        model has an available version, none is degraded, and the server is not draining."""
        return not self.draining and self.manager.ready() and not self.frame.lanes.degraded()

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a management call in the worker pool: each carries its own, longer bound (a
        load or reload may take a minute); the inference timeout does not apply."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


def build_context(manager: Manager, executor: ThreadPoolExecutor, admin_token: str | None = None,
                  timeout_seconds: float = 30.0, reload_timeout_seconds: float = 60.0,
                  reload_config: Callable[[], dict] | None = None,
                  admission: AdmissionOptions | None = None) -> ServerContext:
    return ServerContext(manager, RequestFrame(manager, executor, admission), executor, AdminAuth(admin_token),
                         timeout_seconds, reload_timeout_seconds, reload_config)
