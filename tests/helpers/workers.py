"""Real `distillery worker` processes for a test, and polling until something holds."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.services import TEST_REDIS_URL


class Workers:
    """Real `distillery worker` processes, stopped (warm, then hard) at the end of the test."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        config: Path,
        tiers: str | None = "frontier",  # None: no --tiers, so every configured tier
        concurrency: int = 8,
        *,
        control: bool = True,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"worker-{len(self.processes)}.log").open("wb")
        environ = {
            **os.environ,
            "DISTILLERY_CONFIG": str(config),
            "REDIS_URL": TEST_REDIS_URL,
            **env,
        }
        environ.pop("DATABASE_URL", None)  # the worker's config names its database
        command = [
            sys.executable,
            "-m",
            "producer.cli",
            "worker",
            *(["--tiers", tiers] if tiers is not None else []),
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            *([] if control else ["--no-control"]),
        ]
        process = subprocess.Popen(command, env=environ, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.logs.glob("worker-*.log"))
        )


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    logs: Callable[[], str] | None = None,
) -> None:
    """Poll until `condition` holds; a generous timeout guards against hangs, never speed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    detail = f"\n--- worker logs ---\n{logs()[-4000:]}" if logs else ""
    pytest.fail(f"timed out waiting for {what}{detail}")
