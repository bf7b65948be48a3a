"""`distillery db`: schema migrations against settings.database_url.

producer.cli registers the group with `db_group(handle_errors, database_url)`: it passes its
error handler and settings in because it imports this module (importing them back would be
a cycle, and would run cli.py twice under `python -m producer.cli`)."""

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click
from sqlalchemy.engine import Engine

from producer.errors import ExitCode, UserError

if TYPE_CHECKING:
    from models.migrate import UpgradeOutcome

F = TypeVar("F", bound=Callable[..., Any])


class ErrorHandler(Protocol):
    """producer.cli.handle_errors: known failures become one line and a named exit code."""

    def __call__(self, command: F) -> F: ...


def db_group(handle_errors: ErrorHandler, database_url: Callable[[], str]) -> click.Group:
    @click.group("db")
    def db() -> None:
        """Create and migrate the database schema (Alembic; PostgreSQL in production)."""

    @db.command("upgrade")
    @click.option("--sql", "as_sql", is_flag=True, help="print the SQL instead of running it")
    @handle_errors
    def upgrade(as_sql: bool) -> None:
        """Migrate the database to this version's schema; tables made without migrations
        (the embedded default, or before the first upgrade) are checked and adopted."""
        run_upgrade(database_url(), as_sql=as_sql)

    @db.command("current")
    @handle_errors
    def current() -> None:
        """The database's revision, and whether it is the newest."""
        click.echo(describe_current(_engine(database_url())))

    @db.command("stamp")
    @click.argument("revision", default="head")
    @handle_errors
    def stamp(revision: str) -> None:
        """Record REVISION as applied without running it (after migrating by hand)."""
        from models import migrate

        migrate.stamp(_engine(database_url()), revision)
        click.echo(f"recorded revision {revision}")

    return db


def run_upgrade(url: str, *, as_sql: bool) -> None:
    from models import migrate

    if as_sql:
        migrate.upgrade_sql(url, sys.stdout)
        return
    try:
        outcome = migrate.upgrade(_engine(url))
    except migrate.UnrecognisedSchema as exc:
        raise UserError(str(exc), ExitCode.BAD_CONFIG) from exc
    click.echo(describe_upgrade(outcome))


def describe_upgrade(outcome: "UpgradeOutcome") -> str:
    before = outcome.before
    if before.up_to_date:
        return f"already at revision {outcome.after} (head)"
    if outcome.adopted:
        return f"adopted the tables made without migrations as revision {outcome.after}"
    return f"upgraded from {before.revision or 'an empty database'} to {outcome.after}"


def describe_current(engine: Engine) -> str:
    from models import migrate

    state = migrate.schema_state(engine)
    if state.up_to_date:
        return f"{state.revision} (head)"
    if state.revision is not None:
        return f"{state.revision} (head is {state.head}: run `distillery db upgrade`)"
    if state.has_tables:
        return "none: tables made without migrations; `distillery db upgrade` adopts them"
    return "none: empty database; `distillery db upgrade` creates the tables"


def _engine(url: str) -> Engine:
    from models import get_engine

    return get_engine(url)
