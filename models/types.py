"""Column types that behave the same on SQLite and PostgreSQL."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

# JSONB on PostgreSQL so users can index and query inside messages and metadata.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes, also on SQLite (which stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use datetime.now(UTC)")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class StrEnumType(TypeDecorator[StrEnum]):
    """A str enum stored as its value in a plain VARCHAR, on every database.

    The value ('failed') is what users write in SQL, and a new member needs no migration:
    SQLAlchemy's Enum would store the member's name ('FAILED') in a native PostgreSQL enum
    type, which only `ALTER TYPE` can extend."""

    impl = String
    cache_ok = True

    def __init__(self, enum_class: type[StrEnum]) -> None:
        super().__init__()
        self.enum_class = enum_class

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        # Through the enum, so a typo fails here instead of being stored.
        return None if value is None else self.enum_class(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> StrEnum | None:
        if value is None:
            return None
        try:
            return self.enum_class(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a {self.enum_class.__name__} value; a database written "
                "before enums were stored by value needs `distillery db upgrade` once"
            ) from None
