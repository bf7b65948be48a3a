"""`create_job` on PostgreSQL stores its prompts with COPY (models/bulk.py): the same stored
values as the ORM's bulk INSERT it replaces (JSON 'null' versus SQL NULL included), the same
Python values read back as on SQLite, and all in the job's transaction."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError
from sqlmodel import Session

from models import Job, JobMode, Prompt, PromptStatus, session_scope
from models.bulk import copy_insert
from models.queries import create_job, stream_prompts
from tests.helpers.services import make_engine

PROMPTS = 3000
# What COPY's text format must escape, and what JSON and unicode make of it.
AWKWARD = [
    "plain",
    "accents: é à ü ß, CJK: 你好世界, RTL: مرحبا, emoji: 🌱🚀👩‍🔬",
    "backslash \\ and \\N and \\. and a tab\there",
    "line\nbreaks\r\nand\rreturns",
    "quotes \" ' and commas , ; |",
    "",
    "\\N",
    "\u2028 line separator, \ufeff BOM, \U0001f600",
]
POSTGRES = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def prompt(i: int) -> dict[str, Any]:
    """Prompt `i` as `producer.submit.prompt_rows` builds them, cycling through awkward values."""
    word = AWKWARD[i % len(AWKWARD)]
    messages = [{"role": "user", "content": f"{word} #{i}"}]
    if i % 3 == 0:
        messages.insert(0, {"role": "system", "content": word})
    metas: list[dict[str, Any] | None] = [
        None,
        {},
        {"source": word, "n": i, "ok": i % 2 == 0, "score": 2.5, "none": None},
        {"nested": {"list": [1, "two", [3.25, {"deep": word}], None], "big": 2**53 + i}},
        {"clé 🔑": [word, {"": word}]},
    ]
    custom_ids = [None, f"id-{i}", word, ""]
    return {
        "messages": messages,
        "custom_id": custom_ids[i % len(custom_ids)],
        "meta": metas[i % len(metas)],
    }


def prompts(n: int = PROMPTS) -> list[dict[str, Any]]:
    return [prompt(i) for i in range(n)]


def store(engine: Engine, rows: list[dict[str, Any]]) -> int:
    with session_scope(engine) as session:
        job = create_job(session=session, mode=JobMode.TEACHER, prompts=rows, name="bulk")
        assert job.id is not None
        return job.id


def orm_insert(session: Session, rows: list[dict[str, Any]]) -> None:
    """The executemany path create_job takes on SQLite, run on PostgreSQL for comparison."""
    session.execute(insert(Prompt), rows)


def copy(session: Session, rows: list[dict[str, Any]]) -> None:
    copy_insert(session, Prompt, rows)


def store_with(
    engine: Engine,
    rows: list[dict[str, Any]],
    insert_rows: Callable[[Session, list[dict[str, Any]]], None],
) -> int:
    """A job whose prompts `insert_rows` stores, with the keys create_job adds."""
    with session_scope(engine) as session:
        job = Job(mode=JobMode.TEACHER, name="bulk", params={}, total=len(rows))
        session.add(job)
        session.flush()
        assert job.id is not None
        full_rows = [
            {"job_id": job.id, "idx": i, "status": PromptStatus.PENDING, **p}
            for i, p in enumerate(rows)
        ]
        insert_rows(session, full_rows)
        return job.id


def stored_text(engine: Engine, job_id: int) -> list[str]:
    """Every column but the ids of a job's prompts, as PostgreSQL prints the row: SQL NULL
    prints as nothing, JSON null as `null`, so the two cannot be confused."""
    table = Prompt.__table__
    names = [c.name for c in table.columns if c.name not in ("id", "job_id")]
    columns = ", ".join(f'"{name}"' for name in names)
    query = text(f"SELECT ROW({columns})::text FROM prompts WHERE job_id = :job ORDER BY idx")
    with engine.connect() as connection:
        return list(connection.execute(query, {"job": job_id}).scalars())


def read_back(engine: Engine, job_id: int) -> list[dict[str, Any]]:
    with Session(engine) as session:
        return [p.model_dump() for p in stream_prompts(session=session, job_id=job_id)]


@POSTGRES
def test_copy_stores_what_the_orm_insert_stores(database_url: str) -> None:
    engine = make_engine(database_url)
    rows = prompts()
    copied = store(engine, rows)
    inserted = store_with(engine, rows, orm_insert)

    assert stored_text(engine, copied) == stored_text(engine, inserted)
    with engine.connect() as connection:
        ids = "SELECT id FROM prompts WHERE job_id = :job ORDER BY idx"
        ids_in_order = connection.execute(text(ids), {"job": copied}).scalars()
        assert list(ids_in_order) == list(range(1, PROMPTS + 1))  # from the sequence, in order
        nulls = "SELECT count(*) FROM prompts WHERE job_id = :job AND metadata IS NULL"
        assert connection.execute(text(nulls), {"job": copied}).scalar() == 0  # JSON null
    with Session(engine) as session:
        job = session.get(Job, copied)
        assert job is not None and job.total == PROMPTS


@POSTGRES
def test_the_same_values_read_back_as_on_sqlite(database_url: str, sqlite_url: str) -> None:
    rows = prompts()
    on_postgres = read_back(make_engine(database_url), store(make_engine(database_url), rows))
    on_sqlite = read_back(make_engine(sqlite_url), store(make_engine(sqlite_url), rows))

    assert on_postgres == on_sqlite
    first = on_postgres[0]
    assert first["status"] is PromptStatus.PENDING and first["meta"] is None
    assert (first["fell_back"], first["prompt_tokens"], first["cost_usd"]) == (False, 0, 0.0)
    assert [p["messages"] for p in on_postgres] == [p["messages"] for p in rows]
    assert [p["meta"] for p in on_postgres] == [p["meta"] for p in rows]
    assert [p["custom_id"] for p in on_postgres] == [p["custom_id"] for p in rows]


@POSTGRES
def test_a_row_postgres_refuses_stores_nothing_not_even_the_job(database_url: str) -> None:
    engine = make_engine(database_url)
    rows = prompts(50)
    rows[42]["messages"] = [{"role": "user", "content": "a NUL \x00 in text"}]

    with pytest.raises(DataError, match="unsupported Unicode escape sequence"):
        store(engine, rows)  # as the ORM's INSERT raises it: SQLAlchemy's error, not psycopg's

    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Prompt)) == 0


@POSTGRES
def test_copy_runs_in_the_jobs_transaction(database_url: str) -> None:
    engine = make_engine(database_url)
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        create_job(session=session, mode=JobMode.TEACHER, prompts=prompts(10))
        raise RuntimeError("after the COPY, before the commit")

    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Prompt)) == 0
    job_id = store(engine, [])  # no prompts: no COPY at all
    assert read_back(engine, job_id) == []


@POSTGRES
def test_rows_create_job_never_builds_store_what_the_orm_insert_stores(database_url: str) -> None:
    """copy_insert on its own: keys left out (their default, or NULL), a None where the
    column has a default, values for columns create_job leaves alone, a key naming no column."""
    engine = make_engine(database_url)
    messages = [{"role": "user", "content": "é \\ \t 🌱"}]
    finished = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    rows: list[dict[str, Any]] = [
        {"messages": messages},
        {"messages": messages, "meta": None, "fell_back": None, "prompt_tokens": 7},
        {"messages": messages, "custom_id": "x", "not_a_column": 1},
        {
            "messages": messages,
            "status": PromptStatus.SUCCEEDED,
            "response": "an answer\nover two lines",
            "finished_at": finished,
            "cost_usd": 0.1 + 0.2,
            "confidence": 1e-300,
            "fell_back": True,
            "routed_tier": "small",
        },
    ]

    copied = store_with(engine, rows, copy)
    inserted = store_with(engine, rows, orm_insert)

    assert stored_text(engine, copied) == stored_text(engine, inserted)
    assert read_back(engine, copied)[3]["finished_at"] == finished
