"""Shared fixtures: real Redis, real SQLite and PostgreSQL, the simulator over real HTTP, and
real worker processes. A missing service skips a test locally and fails it under CI=true."""

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The Celery app of this process is built at import from these; set them before any import
# of ours (these two helper modules import none).
from tests.helpers.config import TIERS
from tests.helpers.services import TEST_REDIS_URL

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
from tests.helpers.faults import LATENCY_MS  # noqa: E402
from tests.helpers.services import need, postgres_database  # noqa: E402
from tests.helpers.workers import Workers  # noqa: E402


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


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'distillery.db'}"
    else:
        yield from postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'distillery.db'}"


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=5))) as running:
        yield running


@pytest.fixture
def slow_sim() -> Iterator[RunningSimulator]:
    """Calls slow enough (LATENCY_MS) that a fault lands while a job is mid-way."""
    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=LATENCY_MS))) as running:
        yield running


@pytest.fixture
def tiered_sim() -> Iterator[RunningSimulator]:
    """Three models named like the test tiers, from weak to able (real cascades)."""
    with start_in_thread(SimConfig.tiered(latency_ms=5)) as running:
        yield running


@pytest.fixture
def batch_sim() -> Iterator[RunningSimulator]:
    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=1))) as running:
        running.configure_batches(step_s=0)  # one stage per poll
        yield running


@pytest.fixture
def workers(tmp_path: Path, clean_redis: Any) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    yield pool
    pool.stop()


@pytest.fixture
def use_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Point the settings at a config file, re-read for this test only."""
    from workers.settings import get_settings

    def use(path: Path) -> Path:
        monkeypatch.setenv("DISTILLERY_CONFIG", str(path))
        get_settings.cache_clear()
        return path

    yield use
    get_settings.cache_clear()
