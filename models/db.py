"""One engine per process and URL; sessions that commit or roll back as a unit."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

import models.tables  # noqa: F401  (registers the tables on SQLModel.metadata)


def normalise_url(url: str) -> str:
    """Accept the plain `postgresql://` URLs people paste; we ship the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def get_engine(url: str) -> Engine:
    # Keyed by pid: a forked process must not reuse its parent's sockets.
    return _engine(normalise_url(url), os.getpid())


@lru_cache(maxsize=8)
def _engine(url: str, pid: int) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    # pre_ping: a backend killed by the server (restart, pg_terminate_backend) is replaced
    # instead of failing the next task.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=30)


def _sqlite_engine(url: str) -> Engine:
    connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": 60}
    engine = create_engine(url, connect_args=connect_args, pool_size=10, max_overflow=30)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers (status, progress bars) run while workers write;
        # busy_timeout makes concurrent writers from several processes wait instead of failing.
        # (busy_timeout first: switching a fresh file to WAL takes a lock too, and processes
        # that start together on it must wait for each other there as well.)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def get_write_engine(url: str) -> Engine:
    """The engine for the workers' ledger writes. On SQLite its transactions start with
    `BEGIN IMMEDIATE`: a write transaction that first reads would otherwise take the write
    lock only at its first write, and in WAL mode fail at once with `database is locked`
    when another process committed in between (the busy timeout does not apply to that
    case). Elsewhere it is the ordinary engine."""
    url = normalise_url(url)
    if not url.startswith("sqlite"):
        return get_engine(url)
    return _immediate_sqlite_engine(url, os.getpid())


@lru_cache(maxsize=8)
def _immediate_sqlite_engine(url: str, pid: int) -> Engine:
    engine = _sqlite_engine(url)

    @event.listens_for(engine, "connect")
    def _manual_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# Any number PostgreSQL's advisory lock agrees on across processes: the schema's creation.
SCHEMA_LOCK_KEY = 0x64697374  # "dist"


def create_tables(engine: Engine) -> None:
    """Create the tables that are missing, once, however many processes start together on
    a fresh database: the DDL runs under a lock — SQLite's write lock (BEGIN IMMEDIATE),
    PostgreSQL's advisory transaction lock — so the others wait, then find the tables and
    create nothing. (Without it, the loser's CREATE failed with "already exists".)"""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        with get_write_engine(url).begin() as conn:
            SQLModel.metadata.create_all(conn)
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        SQLModel.metadata.create_all(conn)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
