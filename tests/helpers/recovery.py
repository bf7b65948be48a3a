"""What the automatic-recovery tests (tests/test_recovery.py) need beside the fault helpers:
recovery periods short enough for a test, private servers a test may break (a Redis to
FLUSHALL, a PostgreSQL cluster to restart, a RabbitMQ vhost), and a submit through the CLI
(so it publishes to the broker the test names, not to this process's)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers.faults import prompt_rows
from tests.helpers.pipeline import write_jsonl
from tests.helpers.services import TEST_REDIS_URL, free_port, need

# Periods a test can wait out (defaults are 3 / 10 / 10 s): a dead worker's lease expires
# after 1.5 s, and what it held is re-sent within about 1 + 1.5 s after that.
FAST_RECOVERY = "[recovery]\nheartbeat_s = 0.5\nlease_s = 1.5\nsweep_s = 1.0\n"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RESENT = "re-sent"
REDUCER_SENT = "nobody holds its reducer"


def cli_submit(config: Path, tmp_path: Path, count: int, env: dict[str, str]) -> int:
    """`distillery submit FILE --json` in its own process, with the test's broker."""
    path = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(count))
    environ = {**os.environ, "DISTILLERY_CONFIG": str(config), "REDIS_URL": TEST_REDIS_URL}
    environ.pop("DATABASE_URL", None)
    environ.update(env)
    command = [sys.executable, "-m", "producer.cli", "submit", str(path), "--json"]
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return int(json.loads(result.stdout)["id"])


def _wait_for(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up")


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of this test's own (no persistence), its URL; stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        need("redis-server", "not on PATH")
    port = free_port()
    command = [binary, "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    try:
        _wait_for(up, "the private redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own under /tmp, run as the postgres user (the
    server refuses root), that the test may stop and start."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            need("postgresql", f"{PG_BIN} is missing")
        self.dir = Path(tempfile.mkdtemp(prefix="distillery-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.dir, "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                          "--auth=trust", "-E", "UTF8")  # fmt: skip

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                          "-l", str(self.dir / "server.log"), "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                          "stop")  # fmt: skip

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of this test's own on the local RabbitMQ, its broker URL; deleted after."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        need("rabbitmq", "rabbitmqctl is not on PATH")
    vhost = f"distillery-t-{uuid.uuid4().hex[:8]}"
    added = subprocess.run([ctl, "add_vhost", vhost], capture_output=True, timeout=60)
    if added.returncode != 0:
        need("rabbitmq", added.stderr.decode(errors="replace"))
    try:
        subprocess.run(
            [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)
