"""Alembic's entry point, run by models.migrate: the connection (online) or the URL (--sql,
offline) comes in Config.attributes, so no alembic.ini or sqlalchemy.url is read from the cwd,
and a password with a '%' in it survives (an ini value would be interpolated)."""

from alembic import context
from sqlmodel import SQLModel

import models.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from models.migrate import only_our_tables

target_metadata = SQLModel.metadata


def run_offline() -> None:
    url = context.config.attributes["url"]
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=only_our_tables,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
