"""What training reads from the ledger and writes back: a teacher job's answers streamed for
the reducer, a route job's escalations for the history router, and the `training_files`
rows that fine-tuning matches a file to and records its provider job on."""

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Select, String, Text, cast, select, type_coerce, update
from sqlmodel import Session, col

from models.tables import JOBS, PROMPTS, Fallback, FallbackReason, JobMode, TrainingFile

# Rows per fetch from the database (a server-side cursor on PostgreSQL): fewer round trips
# than 2,000, and still a few MiB of rows in memory at a time.
ROWS_PER_FETCH = 5000


class AnswerRow(NamedTuple):
    """A prompt of a teacher job as the reducer reads it."""

    # A NamedTuple, not a frozen dataclass: built once per row, and ~2.5x cheaper to build.
    idx: int
    status: str
    messages: list[dict[str, Any]]
    response: str | None
    prompt_id: int = 0
    finish_reason: str | None = None
    metadata: str | None = None  # the JSON text, parsed only by a stratified split


def answer_rows(
    *, session: Session, job_id: int, batch: int = ROWS_PER_FETCH, final_tier: str | None = None
) -> Iterator[AnswerRow]:
    """Every prompt of the job in input order (only those `final_tier` answered, when
    given: a live job's teacher answers), fetched `batch` rows at a time so memory stays
    flat however large the job."""
    query = (
        _answer_columns()
        .where(PROMPTS.c.job_id == job_id)
        .order_by(PROMPTS.c.idx)
        .execution_options(yield_per=batch)
    )
    if final_tier is not None:  # ix_prompts_job_final_tier
        query = query.where(PROMPTS.c.final_tier == final_tier)
    return _answers(session, query)


def shadow_answer_rows(*, session: Session, live_job_id: int) -> Iterator[AnswerRow]:
    """The teacher's answers to a live job's shadowed requests (`workers.shadow`), in the
    order they were sent."""
    query = (
        _answer_columns()
        .select_from(PROMPTS.join(JOBS, JOBS.c.id == PROMPTS.c.job_id))
        .where(
            JOBS.c.mode == JobMode.SHADOW,
            PROMPTS.c.metadata["live_job_id"].as_integer() == live_job_id,
        )
        .order_by(PROMPTS.c.id)
    )
    return _answers(session, query)


def _answer_columns() -> Select[Any]:
    # Per row, the cheapest way measured: Core on the table, not the ORM entity (no ORM row
    # loading); the status as the plain string it is stored as (a str enum compares equal to
    # it), not an enum built per row; and messages as text parsed here, which on PostgreSQL
    # costs half of what psycopg's jsonb loader does (the same text, so the same values).
    return select(
        PROMPTS.c.idx,
        type_coerce(PROMPTS.c.status, String),
        cast(PROMPTS.c.messages, Text),
        PROMPTS.c.response,
        PROMPTS.c.id,
        PROMPTS.c.finish_reason,
        cast(PROMPTS.c.metadata, Text),
    )


def _answers(session: Session, query: Select[Any]) -> Iterator[AnswerRow]:
    for idx, status, messages, response, pid, finish, meta in session.connection().execute(query):
        yield AnswerRow(idx, status, json.loads(messages), response, pid, finish, meta)


def low_confidence_prompt_ids(*, session: Session, job_id: int) -> set[int]:
    """The job's prompts that escalated at least once for a low-confidence answer."""
    query = select(col(Fallback.prompt_id)).where(
        col(Fallback.job_id) == job_id, col(Fallback.reason) == FallbackReason.LOW_CONFIDENCE
    )
    return set(session.execute(query).scalars())


def latest_training_file(*, session: Session, job_id: int) -> TrainingFile | None:
    """The job's newest training file (a job reduced twice has two)."""
    return _newest_training_file(session, col(TrainingFile.job_id) == job_id)


def training_file_with_sha256(*, session: Session, sha256: str) -> TrainingFile | None:
    """The newest training file with this content."""
    return _newest_training_file(session, col(TrainingFile.sha256) == sha256)


def training_file_at_path(*, session: Session, path: str) -> TrainingFile | None:
    """The newest training file the reducer wrote to `path` (an absolute path)."""
    return _newest_training_file(session, col(TrainingFile.path) == path)


def _newest_training_file(session: Session, condition: ColumnElement[bool]) -> TrainingFile | None:
    query = select(TrainingFile).where(condition).order_by(col(TrainingFile.id).desc())
    return session.execute(query.limit(1)).scalars().first()


def set_fine_tune_job_id(*, session: Session, record: TrainingFile, fine_tune_job_id: str) -> None:
    """Record the provider's fine-tuning job on a training file's row (replacing an earlier
    one), with one UPDATE: `record` may come from a session that is closed by now."""
    session.execute(
        update(TrainingFile)
        .where(col(TrainingFile.id) == record.id)
        .values(fine_tune_job_id=fine_tune_job_id)
    )
