"""`distillery db upgrade|current|stamp`: schema migrations against the configured
database (Alembic; models/migrate.py does the work)."""

import sys
from typing import TYPE_CHECKING

import click

from producer.cli.common import handle_errors, settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from models.migrate import UpgradeOutcome

# Commands import the modules they work with when they run, so that `--help` loads none of
# them (producer/cli/common.py says which are heavy).


@click.group("db")
def db() -> None:
    """Create and migrate the database schema (Alembic; PostgreSQL in production)."""


@db.command("upgrade")
@click.option("--sql", "as_sql", is_flag=True, help="print the SQL instead of running it")
@handle_errors
def upgrade(as_sql: bool) -> None:
    """Migrate the database to this version's schema; tables made without migrations
    (the embedded default, or before the first upgrade) are checked and adopted."""
    from models import migrate

    url = settings().database_url
    if as_sql:
        migrate.upgrade_sql(url, sys.stdout)
        return
    click.echo(describe_upgrade(migrate.upgrade(_engine(url))))


@db.command("current")
@handle_errors
def current() -> None:
    """The database's revision, and whether it is the newest."""
    click.echo(describe_current(_engine(settings().database_url)))


@db.command("stamp")
@click.argument("revision", default="head")
@handle_errors
def stamp(revision: str) -> None:
    """Record REVISION as applied without running it (after migrating by hand)."""
    from models import migrate

    migrate.stamp(_engine(settings().database_url), revision)
    click.echo(f"recorded revision {revision}")


def describe_upgrade(outcome: "UpgradeOutcome") -> str:
    before = outcome.before
    if before.up_to_date:
        return f"already at revision {outcome.after} (head)"
    if outcome.adopted:
        return f"adopted the tables made without migrations as revision {outcome.after}"
    return f"upgraded from {before.revision or 'an empty database'} to {outcome.after}"


def describe_current(engine: "Engine") -> str:
    from models import migrate

    state = migrate.schema_state(engine)
    if state.up_to_date:
        return f"{state.revision} (head)"
    if state.revision is not None:
        return f"{state.revision} (head is {state.head}: run `distillery db upgrade`)"
    if state.has_tables:
        return "none: tables made without migrations; `distillery db upgrade` adopts them"
    return "none: empty database; `distillery db upgrade` creates the tables"


def _engine(url: str) -> "Engine":
    from models import get_engine

    return get_engine(url)
