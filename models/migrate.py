"""Schema migrations with Alembic, configured in code: the scripts ship inside the package
(models/migrations), so they run from any directory and no alembic.ini is needed.

PostgreSQL in production is migrated with `upgrade`. The embedded SQLite default keeps using
create_all; so may a PostgreSQL database that some command touched before anyone ran
`distillery db upgrade`. Such a database has the tables but no migration history, and
`upgrade` adopts it: it makes the safe, known repairs, checks that what is left equals the
tables of models/tables.py, and records the head revision (or explains what differs).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Enum, String, column, inspect, table, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from models.db import get_engine, normalise_url
from models.types import StrEnumType

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class UnrecognisedSchema(Exception):
    """Tables without migration history that differ from this version's tables."""

    def __init__(self, differences: list[str]) -> None:
        listed = "\n".join(f"  - {line}" for line in differences)
        super().__init__(
            "the database has Distillery's tables but no migration history, and they differ "
            f"from this version's schema:\n{listed}\n"
            "bring them in line by hand, then record the revision with `distillery db stamp`"
        )
        self.differences = differences


@dataclass(frozen=True)
class SchemaState:
    revision: str | None  # None: no migration history
    head: str
    has_tables: bool  # any of our tables exists

    @property
    def up_to_date(self) -> bool:
        return self.revision == self.head


@dataclass(frozen=True)
class UpgradeOutcome:
    before: SchemaState
    after: str

    @property
    def adopted(self) -> bool:
        """The tables were made by create_all and have now been stamped."""
        return self.before.revision is None and self.before.has_tables


def alembic_config(*, output: TextIO | None = None, **attributes: Any) -> Config:
    """Alembic's config with no ini file; env.py takes `connection` or `url` from attributes,
    and offline SQL goes to `output`."""
    config = Config(output_buffer=output)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes.update(attributes)
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "models/migrations/versions holds no revision"
    return head


def schema_state(engine: Engine) -> SchemaState:
    with engine.connect() as connection:
        return _schema_state(connection)


def _schema_state(connection: Connection) -> SchemaState:
    revision = MigrationContext.configure(connection).get_current_revision()
    tables = set(inspect(connection).get_table_names())
    has_tables = bool(tables & set(SQLModel.metadata.tables))
    return SchemaState(revision=revision, head=head_revision(), has_tables=has_tables)


def upgrade(engine: Engine) -> UpgradeOutcome:
    """Bring the database to the head revision, adopting create_all tables first. One
    transaction: on PostgreSQL a failure leaves the database as it was."""
    with engine.begin() as connection:
        before = _schema_state(connection)
        if before.revision is None and before.has_tables:
            adopt(connection)
        command.upgrade(alembic_config(connection=connection), "head")
    return UpgradeOutcome(before=before, after=head_revision())


def upgrade_sql(url: str, out: TextIO) -> None:
    """Write the SQL that creates the schema from nothing, in the URL's dialect, for a DBA to
    review or run (Alembic's offline mode: the database is not contacted)."""
    config = alembic_config(url=normalise_url(url), output=out)
    command.upgrade(config, "head", sql=True)


def stamp(engine: Engine, revision: str = "head") -> None:
    """Record the revision without running anything: for tables migrated by hand."""
    with engine.begin() as connection:
        command.stamp(alembic_config(connection=connection), revision)


def adopt(connection: Connection) -> None:
    """Stamp tables made by create_all as the head revision once they match it."""
    SQLModel.metadata.create_all(connection)  # a table this version has and the database lacks
    store_enums_by_value(connection)
    create_missing_indexes(connection)
    differences = schema_differences(connection)
    if differences:
        raise UnrecognisedSchema(differences)
    command.stamp(alembic_config(connection=connection), "head")


def schema_differences(connection: Connection) -> list[str]:
    """What autogenerate would change to make the database match models/tables.py."""
    options = {"compare_type": True, "include_name": only_our_tables}
    context = MigrationContext.configure(connection, opts=options)
    return [describe(diff) for diff in compare_metadata(context, SQLModel.metadata)]


def only_our_tables(name: str | None, type_: str, _parents: Any) -> bool:
    """Other tables may share the database (a DBA's, Celery's): never ours to drop."""
    return type_ != "table" or name in SQLModel.metadata.tables


def describe(diff: Any) -> str:
    if isinstance(diff, list):  # the modify_* changes of one column come grouped
        return "; ".join(describe(item) for item in diff)
    operation, *args = diff
    if operation.startswith("modify_"):
        _schema, table_name, column_name, _existing, old, new = args
        return f"{operation} {table_name}.{column_name}: {old!r} -> {new!r}"
    names = [str(getattr(arg, "name", arg)) for arg in args if arg is not None]
    return f"{operation} {' '.join(names)}"


def create_missing_indexes(connection: Connection) -> None:
    """Indexes added to tables.py after the tables were made (create_all skips a table that
    exists, with all its indexes)."""
    inspector = inspect(connection)
    for model_table in SQLModel.metadata.sorted_tables:
        existing = {index["name"] for index in inspector.get_indexes(model_table.name)}
        for index in model_table.indexes:
            if index.name not in existing:
                index.create(connection)


def store_enums_by_value(connection: Connection) -> None:
    """Tables made before StrEnumType held SQLAlchemy Enums: the member's *name* ('FAILED'),
    in a native enum type on PostgreSQL. Turn those into VARCHAR holding the value."""
    native_types: set[str] = set()
    for table_name, column_name, enum_class in enum_columns():
        reflected = _reflected_type(connection, table_name, column_name)
        if isinstance(reflected, Enum) and connection.dialect.name == "postgresql":
            _alter_to_varchar(connection, table_name, column_name)
            native_types.add(str(reflected.name))
        _rename_members(connection, table_name, column_name, enum_class)
    for type_name in sorted(native_types):
        connection.exec_driver_sql(f"DROP TYPE IF EXISTS {_quote(connection, type_name)}")


def enum_columns() -> Iterator[tuple[str, str, type[StrEnum]]]:
    for model_table in SQLModel.metadata.sorted_tables:
        for model_column in model_table.columns:
            if isinstance(model_column.type, StrEnumType):
                yield model_table.name, model_column.name, model_column.type.enum_class


def _reflected_type(connection: Connection, table_name: str, column_name: str) -> Any:
    columns = {c["name"]: c["type"] for c in inspect(connection).get_columns(table_name)}
    return columns.get(column_name)


def _alter_to_varchar(connection: Connection, table_name: str, column_name: str) -> None:
    quoted = _quote(connection, column_name)
    connection.exec_driver_sql(
        f"ALTER TABLE {_quote(connection, table_name)} "
        f"ALTER COLUMN {quoted} TYPE VARCHAR USING {quoted}::text"
    )


def _rename_members(
    connection: Connection, table_name: str, column_name: str, enum_class: type[StrEnum]
) -> None:
    # A plain string column: the model's own type would refuse the legacy names.
    value = column(column_name, String)
    target = table(table_name, value)
    for member in enum_class:
        if member.name != member.value:
            connection.execute(
                update(target).where(value == member.name).values({column_name: member.value})
            )


def _quote(connection: Connection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote(name)


def make_revision(url: str, message: str) -> None:
    """For developers: autogenerate the next revision (0002, 0003, ...) from the difference
    between models/tables.py and a database at head. Review the file it writes."""
    with get_engine(url).begin() as connection:
        config = alembic_config(connection=connection)
        # Revision ids are numbered, so the history reads in order in versions/.
        command.revision(
            config, message=message, autogenerate=True, rev_id=f"{int(head_revision()) + 1:04d}"
        )
