"""The response cache's two statements: look up a chunk of keys (one primary-key IN query),
and store new answers, keeping the first answer for a key (two workers that answered the
same request at once both commit; the second row is dropped, not an error)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from models.tables import ATTEMPTS, RESPONSE_CACHE

# Keys per lookup query: bounds the IN list (SQLite allows 32,766 parameters).
LOOKUP_CHUNK = 500


@dataclass(frozen=True, slots=True)
class CachedRow:
    key: str
    attempt_id: int
    response: str
    logprobs: list[float] | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    prompt_id: int  # the prompt whose call paid for it


_COLUMNS = [
    *(RESPONSE_CACHE.c[name] for name in CachedRow.__slots__ if name != "prompt_id"),
    ATTEMPTS.c.prompt_id,
]


def lookup_responses(*, conn: Connection, keys: Sequence[str]) -> dict[str, CachedRow]:
    """The cached answers of `keys` that have one, by key: one query per LOOKUP_CHUNK keys."""
    unique = list(dict.fromkeys(keys))
    found: dict[str, CachedRow] = {}
    for start in range(0, len(unique), LOOKUP_CHUNK):
        chunk = unique[start : start + LOOKUP_CHUNK]
        rows = conn.execute(
            select(*_COLUMNS)
            .join(ATTEMPTS, ATTEMPTS.c.id == RESPONSE_CACHE.c.attempt_id)
            .where(RESPONSE_CACHE.c.key.in_(chunk))
        )
        found.update({row.key: CachedRow(*row) for row in rows})
    return found


def store_responses(*, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert cache rows (every column of response_cache); a key already there keeps its
    first answer."""
    if not rows:
        return
    insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(insert(RESPONSE_CACHE).on_conflict_do_nothing(index_elements=["key"]), rows)
