"""A real S3 API server for tests and benchmarks: moto's server mode as a child process on
127.0.0.1, started and stopped by its owner (and restartable on the same port, for outages).

moto keeps its state in memory: a restarted server is empty, as a store that lost its data
would be; callers re-create what they need.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from hotserve.launcher import free_port, stop_process  # noqa: F401  (fixtures import free_port from here)

# Credentials moto accepts (any will do); set in the environment of every client and server.
ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-do-not-log",
    "AWS_REGION": "us-east-1",
    "S3_USE_HTTPS": "0",
    "S3_VERIFY_SSL": "0",
}


class MotoServer:
    def __init__(self, log_path: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for a hotserve process (or client) talking to this server."""
        return {**os.environ, **ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, timeout: float = 30.0) -> "MotoServer":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"moto server not answering on {self.endpoint} within {timeout}s")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=ENV["AWS_REGION"],
                            aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"],
                            config=Config(s3={"addressing_style": "path"}))
