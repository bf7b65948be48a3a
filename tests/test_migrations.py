"""Alembic migrations: the migrated schema is exactly models/tables.py, upgrading twice is a
no-op, and tables made by create_all (today's, or older ones with native enums) are adopted."""

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from models import (
    AttemptPurpose,
    AttemptStatus,
    FallbackReason,
    Job,
    JobMode,
    JobStatus,
    PromptStatus,
    get_engine,
    migrate,
)
from models.types import StrEnumType
from producer.cli.db import db
from tests.helpers.services import make_engine
from workers.errors import ExitCode
from workers.settings import get_settings

# Indexes added with the migrations: tables made before them lack these.
QUERY_INDEXES = {"ix_attempts_started_at", "ix_attempts_tier", "ix_prompts_job_final_tier"}
NOW = datetime(2024, 5, 1, tzinfo=UTC)


def revision_rows(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
        )


def differences(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return migrate.schema_differences(connection)


def test_one_linear_history() -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(scripts.get_heads()) == 1


def test_upgrade_builds_exactly_the_tables_of_the_models(database_url: str) -> None:
    engine = get_engine(database_url)
    outcome = migrate.upgrade(engine)
    assert outcome.before.revision is None and not outcome.before.has_tables
    assert not outcome.adopted
    assert differences(engine) == []
    assert revision_rows(engine) == [migrate.head_revision()]


def test_upgrade_is_idempotent(database_url: str) -> None:
    engine = get_engine(database_url)
    migrate.upgrade(engine)
    again = migrate.upgrade(engine)
    assert again.before.up_to_date and not again.adopted
    assert revision_rows(engine) == [migrate.head_revision()]
    assert differences(engine) == []


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_postgres_enums_are_varchar_and_json_is_jsonb(database_url: str) -> None:
    engine = get_engine(database_url)
    migrate.upgrade(engine)
    with engine.connect() as connection:
        columns = connection.execute(
            sa.text(
                "SELECT table_name || '.' || column_name, data_type "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            )
        )
        types: dict[str, str] = {name: data_type for name, data_type in columns}
        native_enums = connection.execute(
            sa.text("SELECT typname FROM pg_type WHERE typtype = 'e'")
        )
        assert list(native_enums) == []
    for name in ("jobs.mode", "jobs.status", "prompts.status", "attempts.status"):
        assert types[name] == "character varying"
    assert types["prompts.messages"] == "jsonb"
    assert types["attempts.started_at"] == "timestamp with time zone"


def test_upgrade_adopts_tables_made_by_create_all(database_url: str) -> None:
    engine = make_engine(database_url)
    with Session(engine) as session:
        session.add(Job(name="kept", mode=JobMode.TEACHER))
        session.commit()
    outcome = migrate.upgrade(engine)
    assert outcome.adopted
    assert revision_rows(engine) == [migrate.head_revision()]
    assert differences(engine) == []
    with Session(engine) as session:
        assert [job.name for job in session.exec(select(Job))] == ["kept"]


def legacy_metadata() -> sa.MetaData:
    """The tables as create_all made them before the migrations: SQLAlchemy Enums (member
    names, native types on PostgreSQL) and no query indexes."""
    legacy = sa.MetaData()
    for table in SQLModel.metadata.sorted_tables:
        copy = table.to_metadata(legacy)
        for column in copy.columns:
            if isinstance(column.type, StrEnumType):
                column.type = sa.Enum(column.type.enum_class)
        for index in [i for i in copy.indexes if i.name in QUERY_INDEXES]:
            copy.indexes.discard(index)
    return legacy


def create_legacy_tables(engine: Engine) -> sa.MetaData:
    legacy = legacy_metadata()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Types swapped in after the tables were built miss their CREATE TYPE hook.
            for enum_type in legacy_enum_types(legacy):
                enum_type.create(connection, checkfirst=True)
        legacy.create_all(connection)
    return legacy


def legacy_enum_types(legacy: sa.MetaData) -> list[sa.Enum]:
    return [
        column.type
        for table in legacy.sorted_tables
        for column in table.columns
        if isinstance(column.type, sa.Enum)
    ]


def seed_legacy(engine: Engine) -> None:
    legacy = create_legacy_tables(engine)
    tables = legacy.tables
    with engine.begin() as connection:
        connection.execute(
            tables["jobs"].insert(),
            {"id": 1, "mode": JobMode.ROUTE, "status": JobStatus.FINISHED, "params": {}}
            | {"total": 1, "completed": 1, "failed": 0, "cancelled": 0, "fell_back": 1}
            | {"created_at": NOW},
        )
        connection.execute(
            tables["prompts"].insert(),
            {"id": 1, "job_id": 1, "idx": 0, "messages": [], "status": PromptStatus.SUCCEEDED}
            | {"fell_back": True, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0},
        )
        connection.execute(
            tables["attempts"].insert(),
            {"prompt_id": 1, "purpose": AttemptPurpose.ANSWER, "tier": "small", "model": "m"}
            | {"status": AttemptStatus.RATE_LIMITED, "latency_ms": 1.0, "prompt_tokens": 0}
            | {"completion_tokens": 0, "cost_usd": 0.0, "started_at": NOW},
        )
        connection.execute(
            tables["fallbacks"].insert(),
            {"job_id": 1, "prompt_id": 1, "from_tier": "small", "to_tier": "frontier"}
            | {"reason": FallbackReason.LOW_CONFIDENCE, "created_at": NOW},
        )


def stored_enum_values(engine: Engine) -> list[str]:
    query = (
        "SELECT j.mode, j.status, p.status, a.purpose, a.status, f.reason FROM jobs j "
        "JOIN prompts p ON p.job_id = j.id JOIN attempts a ON a.prompt_id = p.id "
        "JOIN fallbacks f ON f.prompt_id = p.id"
    )
    with engine.connect() as connection:
        return list(connection.execute(sa.text(query)).one())


def test_upgrade_converts_tables_made_before_migrations(database_url: str) -> None:
    engine = get_engine(database_url)
    seed_legacy(engine)
    assert stored_enum_values(engine) == [
        "ROUTE", "FINISHED", "SUCCEEDED", "ANSWER", "RATE_LIMITED", "LOW_CONFIDENCE"
    ]  # fmt: skip
    assert differences(engine) != []
    assert migrate.upgrade(engine).adopted
    assert stored_enum_values(engine) == [
        "route", "finished", "succeeded", "answer", "rate_limited", "low_confidence"
    ]  # fmt: skip
    assert differences(engine) == []
    with Session(engine) as session:
        job = session.get(Job, 1)
        assert job is not None and job.status == JobStatus.FINISHED


def test_adoption_creates_a_table_the_database_lacks(database_url: str) -> None:
    # As a database made by create_all before fine_tunes existed (revision 0002).
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE fine_tunes"))
    assert migrate.upgrade(engine).adopted
    assert differences(engine) == []


def test_other_tables_in_the_database_are_left_alone(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)"))
    assert migrate.upgrade(engine).adopted
    assert differences(engine) == []
    assert "someone_elses" in sa.inspect(engine).get_table_names()


def test_upgrade_explains_tables_it_does_not_recognise(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE jobs DROP COLUMN source"))
    with pytest.raises(migrate.UnrecognisedSchema) as raised:
        migrate.upgrade(engine)
    assert raised.value.differences == ["add_column jobs source"]
    assert "distillery db stamp" in str(raised.value)
    assert migrate.schema_state(engine).revision is None  # nothing was recorded


def test_upgrade_sql_is_postgres_ddl_without_native_enums() -> None:
    out = io.StringIO()
    migrate.upgrade_sql("postgresql://someone@nowhere/db", out)
    sql = out.getvalue()
    assert "CREATE TABLE prompts" in sql and "messages JSONB NOT NULL" in sql
    assert "status VARCHAR NOT NULL" in sql and "CREATE TYPE" not in sql
    assert "started_at TIMESTAMP WITH TIME ZONE NOT NULL" in sql
    assert "CREATE INDEX ix_attempts_started_at ON attempts (started_at)" in sql
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in sql


def run_db(url: str, *args: str) -> tuple[int, str]:
    get_settings.cache_clear()  # the command reads DATABASE_URL anew
    result = CliRunner().invoke(db, list(args), env={"DATABASE_URL": url})
    get_settings.cache_clear()
    return result.exit_code, result.output


def test_db_commands_from_any_directory(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no alembic.ini here: the config is built in code
    head = migrate.head_revision()
    empty = "none: empty database; `distillery db upgrade` creates the tables\n"
    assert run_db(database_url, "current") == (0, empty)
    assert run_db(database_url, "upgrade") == (0, f"upgraded from an empty database to {head}\n")
    assert run_db(database_url, "upgrade") == (0, f"already at revision {head} (head)\n")
    assert run_db(database_url, "current") == (0, f"{head} (head)\n")


def test_db_upgrade_adopts_or_refuses_with_exit_code(database_url: str) -> None:
    engine = make_engine(database_url)
    assert run_db(database_url, "current")[1].startswith("none: tables made without migrations")
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE jobs DROP COLUMN source"))
    code, output = run_db(database_url, "upgrade")
    assert code == ExitCode.BAD_CONFIG
    assert "add_column jobs source" in output
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE jobs ADD COLUMN source VARCHAR"))
    adopted = f"adopted the tables made without migrations as revision {migrate.head_revision()}"
    assert run_db(database_url, "upgrade") == (0, adopted + "\n")


def test_db_stamp_records_a_revision(database_url: str) -> None:
    make_engine(database_url)
    assert run_db(database_url, "stamp") == (0, "recorded revision head\n")
    assert run_db(database_url, "current") == (0, f"{migrate.head_revision()} (head)\n")
