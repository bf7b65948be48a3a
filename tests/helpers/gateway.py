"""A real `distillery serve` process for a test, on a free port, stopped with SIGTERM."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.services import TEST_REDIS_URL, free_port


class GatewayProcess:
    def __init__(self, config: Path, log: Path, *, processes: int = 1, **env: str) -> None:
        self.port = free_port()
        self.log_path = log
        environ = {
            **os.environ,
            "DISTILLERY_CONFIG": str(config),
            "REDIS_URL": TEST_REDIS_URL,
            **env,
        }
        environ.pop("DATABASE_URL", None)  # the config names the database
        command = [sys.executable, "-m", "producer.cli", "serve", "--port", str(self.port)]
        command += ["--processes", str(processes)]
        self.process = subprocess.Popen(
            command, env=environ, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        self._wait_listening()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def _wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the gateway exited ({self.process.returncode}):\n{self.log()}")
            try:
                httpx.get(self.url + "/v1/models", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail(f"the gateway did not start listening:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def client(self, **options: Any) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, **options)

    def async_client(self, **options: Any) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url, api_key="unused", max_retries=0, **options)


def streamed_text(raw: Any, routed: str, final: str) -> str:
    """A `with_raw_response` stream's text, checked as the hold-back cascade streams it:
    the routed and final tiers in the headers, the final tier as every chunk's `model`,
    no usage (not asked for), and a last chunk that says `stop`."""
    headers = raw.headers
    assert (headers["x-distillery-routed-tier"], headers["x-distillery-tier"]) == (routed, final)
    assert float(headers["x-distillery-held-ms"]) > 0
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.model for c in chunks} == {final}
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    return "".join(c.choices[0].delta.content or "" for c in chunks)


def ledger_rows(engine: Any, table: Any, prompt_id: int) -> list[Any]:
    """A prompt's rows of `table` (attempts, fallbacks)."""
    from sqlmodel import Session, select

    with Session(engine) as session:
        return list(session.exec(select(table).where(table.prompt_id == prompt_id)).all())
