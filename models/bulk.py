"""Bulk inserts through PostgreSQL's COPY, storing exactly what the ORM's bulk INSERT stores.

`session.execute(insert(Entity), rows)` goes through psycopg's executemany: one INSERT per
row, ~11 s for 100,000 prompts (docs/performance.md). COPY streams the same rows in one
statement, several times faster. To store the same values, every value goes through the
column type's own bind processor for the session's dialect (JSON/JSONB wrapping, enum
values, UTC checks), and missing or None values get the column's Python default, as the ORM
bulk insert gives them.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Column, inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel

Converter = Callable[[Mapping[str, Any]], Any]
_MISSING = object()


@dataclass
class _Plan:
    """What COPY writes for each row: one value per converter (the columns the rows give,
    and those whose default is computed per row), then the same constants for the columns
    no row gives whose default is a constant (computed once, not 100,000 times)."""

    columns: list[Column[Any]] = field(default_factory=list)
    converters: list[Converter] = field(default_factory=list)
    constants: list[Any] = field(default_factory=list)


def copy_insert(
    session: Session, entity: type[SQLModel], rows: Sequence[Mapping[str, Any]]
) -> None:
    """INSERT `rows` (dicts keyed by attribute name, as `insert(entity)` takes them) into
    `entity`'s table with COPY, in the session's transaction. PostgreSQL (psycopg 3) only.

    Columns no row names and without a Python default are left out of the COPY, so the
    database fills them (the id from its sequence) as it does for the ORM's INSERT."""
    if not rows:
        return
    connection = session.connection()
    plan = _plan(entity, set().union(*rows), connection.dialect)
    driver_connection = connection.connection.driver_connection
    assert driver_connection is not None
    statement = _copy_statement(plan.columns).as_string(driver_connection)
    converters, constants = plan.converters, plan.constants
    try:
        with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([convert(row) for convert in converters] + constants)
    except psycopg.Error as exc:
        # Raised as SQLAlchemy raises a failed INSERT (sqlalchemy.exc.DataError, ...), so
        # callers that translate database errors see what the ORM's INSERT would raise.
        raise DBAPIError.instance(
            statement, None, exc, psycopg.Error, dialect=connection.dialect
        ) from exc


def _copy_statement(columns: list[Column[Any]]) -> sql.Composed:
    names = sql.SQL(", ").join(sql.Identifier(column.name) for column in columns)
    return sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(columns[0].table.name), names)


def _plan(entity: type[SQLModel], given: set[str], dialect: Dialect) -> _Plan:
    """Every column the ORM's INSERT would set: those the rows give, and those with a
    Python default (which the ORM fills in where a row gives none)."""
    # A key that names no column is ignored, as the ORM's bulk INSERT ignores it.
    plan, constant_columns = _Plan(), []
    for attribute in inspect(entity).column_attrs:
        column, default = attribute.columns[0], attribute.columns[0].default
        if attribute.key not in given and default is not None and default.is_scalar:
            constant_columns.append(column)
            plan.constants.append(_bound(column, dialect, default.arg))
        elif attribute.key in given or default is not None:
            plan.columns.append(column)
            plan.converters.append(_converter(attribute.key, column, dialect))
    plan.columns += constant_columns
    return plan


def _bound(column: Column[Any], dialect: Dialect, value: Any) -> Any:
    """`value` as the column's type binds it on `dialect`."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return value if process is None else process(value)


def _converter(key: str, column: Column[Any], dialect: Dialect) -> Converter:
    """The value of `column` for a row, as the ORM's bulk INSERT would bind it."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is None and column.default is None:
        # Stored as given, a missing key as NULL: the common case, so a C-level getter.
        return methodcaller("get", key)
    default = _default(column)
    # The ORM leaves a None out of its INSERT (so the default applies) unless the type
    # stores None as a value of its own: JSON stores it as JSON 'null', not SQL NULL.
    none_is_value = column.type.should_evaluate_none

    def convert(row: Mapping[str, Any]) -> Any:
        value = row.get(key, _MISSING)
        if value is _MISSING or (value is None and not none_is_value):
            value = default()
            if value is None:  # no default: SQL NULL, as for a column left out of an INSERT
                return None
        return value if process is None else process(value)

    return convert


def _default(column: Column[Any]) -> Callable[[], Any]:
    """A function giving the column's Python default for one row (None when it has none)."""
    default = column.default
    if default is None:
        return lambda: None
    if default.is_scalar:
        value = default.arg  # type: ignore[attr-defined]
        return lambda: value
    if default.is_callable:
        # SQLAlchemy wraps every callable default to take the execution context; these
        # defaults (like utcnow) ignore it.
        function = default.arg  # type: ignore[attr-defined]
        return lambda: function(None)
    raise ValueError(f"COPY cannot fill {column.name}'s default {default!r}")
