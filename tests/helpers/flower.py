"""Flower started as docker-compose.yml starts it (`celery --app workers.app:app flower`), on a
free port, with the test's password."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers.services import TEST_REDIS_URL, free_port
from tests.helpers.workers import wait_until

USER, PASSWORD = "ops", "correct-horse-battery"
AUTH = httpx.BasicAuth(USER, PASSWORD)


class Flower:
    """A running Flower process and its HTTP API."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def get(self, path: str, auth: httpx.Auth | None = AUTH) -> httpx.Response:
        return httpx.get(self.url + path, auth=auth, timeout=30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_flower(tmp_path: Path, config: Path, args: list[str], env: dict[str, str]) -> Flower:
    """`celery --app workers.app:app --broker URL flower ARGS` on a free port."""
    port = free_port()
    environ = {**os.environ, "DISTILLERY_CONFIG": str(config), **env}
    environ.pop("FLOWER_UNAUTHENTICATED_API", None)
    # No REDIS_URL: the broker Flower watches comes from --broker, as in the compose file.
    environ.pop("REDIS_URL", None)
    command = [sys.executable, "-m", "celery", "--app", "workers.app:app"]
    command += ["--broker", TEST_REDIS_URL, "flower", f"--port={port}", "--address=127.0.0.1"]
    log = tmp_path / "flower.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, *args], env=environ, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    flower = Flower(process, port, log)
    wait_until(lambda: _answers(flower), timeout=60, what="Flower", logs=flower.log_text)
    return flower


def _answers(flower: Flower) -> bool:
    if flower.process.poll() is not None:
        pytest.fail(f"Flower exited with {flower.process.returncode}:\n{flower.log_text()}")
    try:
        return flower.get("/healthcheck", auth=None).status_code == 200
    except httpx.TransportError:
        return False


def stop(flower: Flower) -> None:
    flower.process.terminate()
    try:
        flower.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        flower.process.kill()
        flower.process.wait()
