"""The real services tests run against (Redis, PostgreSQL, the shared data, a free port), and
the rule for a missing one: skip locally, fail under CI=true.

Nothing of ours is imported here: conftest reads TEST_REDIS_URL before the Celery app exists."""

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests use Redis database 13 unless told otherwise, and flush it around each test.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
TEST_PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


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


def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database's URL, dropped when the generator is closed."""
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


def make_engine(url: str) -> Any:
    from models import create_tables, get_engine

    engine = get_engine(url)
    create_tables(engine)
    return engine


def free_port() -> int:
    """A local TCP port that was free a moment ago, for a server a test starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
