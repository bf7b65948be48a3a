"""Shared fixtures: real Redis, real SQLite and PostgreSQL, the simulator over real HTTP, and
real worker processes. A missing service skips a test locally and fails it under CI=true."""

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The Celery app of this process is built at import from these; set them before any import
# of ours. Tests use Redis database 13 and flush it around each test.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
TEST_PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TIERS = ("small", "medium", "frontier")
PRICES = {"small": 0.1, "medium": 0.3, "frontier": 5.0}
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="distillery-tests-"))
_SESSION_CONFIG = _SESSION_DIR / "session.toml"
_SESSION_CONFIG.write_text(
    "\n".join(
        f'[tiers.{t}]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "sim-{t}"\n' for t in TIERS
    ),
    encoding="utf-8",
)
os.environ["REDIS_URL"] = TEST_REDIS_URL
os.environ["DISTILLERY_CONFIG"] = str(_SESSION_CONFIG)
os.environ.pop("DATABASE_URL", None)  # each test names its own database

from simulator import ModelBehaviour, RunningSimulator, SimConfig, start_in_thread  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def need(service: str, reason: str) -> None:
    """Skip locally, fail in CI: CI must have every service."""
    message = f"{service} unavailable: {reason}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def shared_data(name: str) -> Path:
    path = DATA_DIR / name
    if not path.exists():
        need("shared data", f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def redis_client() -> Any:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        need("redis", str(exc))
    return client


@pytest.fixture
def clean_redis(redis_client: Any) -> Iterator[Any]:
    redis_client.flushdb()
    yield redis_client
    redis_client.flushdb()


def _postgres_database() -> Iterator[str]:
    import psycopg

    name = f"distillery_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(
            TEST_PG_ADMIN_URL.replace("postgresql://", "postgresql://", 1), autocommit=True
        )
    except psycopg.OperationalError as exc:
        need("postgresql", str(exc))
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield TEST_PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'distillery.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'distillery.db'}"


def make_engine(url: str) -> Any:
    from models import create_tables, get_engine

    engine = get_engine(url)
    create_tables(engine)
    return engine


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=5))) as running:
        yield running


def write_config(
    path: Path,
    *,
    base_url: str,
    database_url: str,
    extra: str = "",
    enqueue_batch: int | None = None,
    **tier: Any,
) -> Path:
    """A worker config: the three test tiers on the given server."""
    tier_lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in tier.items())
    top = f'database_url = "{database_url}"\noutput_dir = "{path.parent / "output"}"\n'
    if enqueue_batch is not None:
        top += f"enqueue_batch = {enqueue_batch}\n"
    blocks = [top] + [
        f'[tiers.{t}]\nbase_url = "{base_url}"\nmodel = "sim-{t}"\n'
        f"input_per_1k = {PRICES[t]}\noutput_per_1k = {PRICES[t]}\n"
        f"backoff_base_s = 0.05\n{tier_lines}"
        for t in TIERS
    ]
    path.write_text("\n".join(blocks) + "\n" + extra, encoding="utf-8")
    return path


class Workers:
    """Real `distillery worker` processes, stopped (warm, then hard) at the end of the test."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        config: Path,
        tiers: str = "frontier",
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
            "--tiers",
            tiers,
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


@pytest.fixture
def workers(tmp_path: Path, clean_redis: Any) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    yield pool
    pool.stop()


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
