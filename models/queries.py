"""Keyword-only helpers over the tables: every state change is one conditional UPDATE, so
a redelivered message or two racing workers can never count a prompt twice (the workers'
group commit of outcomes is `models.outcomes`)."""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlmodel import Session, col

from models.bulk import copy_insert
from models.tables import (
    TERMINAL_PROMPT_STATUSES,
    Attempt,
    Fallback,
    Job,
    JobMode,
    JobStatus,
    Prompt,
    PromptStatus,
    TrainingFile,
)
from models.types import utcnow


def create_job(
    *,
    session: Session,
    mode: JobMode,
    prompts: Sequence[dict[str, Any]],
    name: str | None = None,
    router: str | None = None,
    params: dict[str, Any] | None = None,
    source: str | None = None,
) -> Job:
    """Store a job and all its prompts (dicts with messages, custom_id, meta) in bulk."""
    job = Job(name=name, mode=mode, router=router, params=params or {}, source=source)
    job.total = len(prompts)
    session.add(job)
    session.flush()
    rows = [
        {"job_id": job.id, "idx": i, "status": PromptStatus.PENDING, **p}
        for i, p in enumerate(prompts)
    ]
    if session.connection().dialect.name == "postgresql":
        # COPY, in the job's transaction: the executemany below sends one INSERT per row
        # there, ~11 s for 100,000 prompts (docs/performance.md). SQLite's is fast enough.
        copy_insert(session, Prompt, rows)
        return job
    for chunk in _chunks(rows, 5000):
        session.execute(insert(Prompt), chunk)
    return job


def _chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def job_id_named(*, session: Session, name: str) -> int | None:
    """The newest job called `name`, or None."""
    query = select(col(Job.id)).where(col(Job.name) == name).order_by(col(Job.id).desc())
    return session.execute(query.limit(1)).scalar()


def unfinished_prompts(*, session: Session, job_id: int) -> list[tuple[int, str | None]]:
    """(prompt id, tier it is due on) for every prompt without a final answer, in input order.
    The tier is the last escalation's target, else the routed tier, else None (not routed yet)."""
    query = (
        select(col(Prompt.id), col(Prompt.routed_tier))
        .where(col(Prompt.job_id) == job_id, col(Prompt.status).not_in(TERMINAL_PROMPT_STATUSES))
        .order_by(col(Prompt.idx))
    )
    rows = session.execute(query).all()
    escalated = _last_escalations(session, job_id)
    return [(pid, escalated.get(pid, routed)) for pid, routed in rows]


def _last_escalations(session: Session, job_id: int) -> dict[int, str]:
    query = (
        select(col(Fallback.prompt_id), col(Fallback.to_tier))
        .where(col(Fallback.job_id) == job_id)
        .order_by(col(Fallback.id))
    )
    return {pid: tier for pid, tier in session.execute(query)}  # later rows win


def has_training_file(*, session: Session, job_id: int) -> bool:
    query = select(col(TrainingFile.id)).where(col(TrainingFile.job_id) == job_id).limit(1)
    return session.execute(query).first() is not None


def first_training_file(*, session: Session, job_id: int) -> TrainingFile | None:
    query = select(TrainingFile).where(col(TrainingFile.job_id) == job_id)
    return session.scalars(query.order_by(col(TrainingFile.id)).limit(1)).first()


def unreduced_teacher_jobs(*, session: Session) -> list[int]:
    """Finished teacher jobs without a training file: their reduce message was lost (a
    worker died between the commit that finished the job and sending it)."""
    reduced = select(col(TrainingFile.job_id))
    query = select(col(Job.id)).where(
        col(Job.mode) == JobMode.TEACHER,
        col(Job.status) == JobStatus.FINISHED,
        col(Job.id).not_in(reduced),
    )
    return list(session.execute(query.order_by(col(Job.id))).scalars())


def cancel_job(*, session: Session, job_id: int) -> int:
    """Cancel every prompt that has not finished; returns how many were cancelled."""
    result = session.execute(
        update(Prompt)
        .where(col(Prompt.job_id) == job_id, col(Prompt.status).not_in(TERMINAL_PROMPT_STATUSES))
        .values(status=PromptStatus.CANCELLED, finished_at=utcnow())
    )
    cancelled = int(result.rowcount)  # type: ignore[attr-defined]
    session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.status) == JobStatus.RUNNING)
        .values(
            status=JobStatus.CANCELLED,
            finished_at=utcnow(),
            cancelled=Job.cancelled + cancelled,
        )
    )
    return cancelled


def stream_prompts(
    *,
    session: Session,
    job_id: int,
    statuses: Iterable[PromptStatus] | None = None,
    final_tiers: Iterable[str] | None = None,
    fell_back: bool | None = None,
    batch: int = 1000,
) -> Iterator[Prompt]:
    """A job's prompts in input order, fetched in batches so memory stays flat. A filter left
    at None keeps every prompt; the others keep those with one of the given values."""
    conditions = _prompt_conditions(job_id, statuses, final_tiers, fell_back)
    query = select(Prompt).where(*conditions).order_by(col(Prompt.idx))
    result = session.execute(query.execution_options(yield_per=batch))
    for (prompt,) in result:
        yield prompt


def _prompt_conditions(
    job_id: int,
    statuses: Iterable[PromptStatus] | None,
    final_tiers: Iterable[str] | None,
    fell_back: bool | None,
) -> list[ColumnElement[bool]]:
    # Each is served by an index that starts with job_id (see Prompt.__table_args__).
    conditions = [col(Prompt.job_id) == job_id]
    if statuses is not None:
        conditions.append(col(Prompt.status).in_(list(statuses)))
    if final_tiers is not None:
        conditions.append(col(Prompt.final_tier).in_(list(final_tiers)))
    if fell_back is not None:
        conditions.append(col(Prompt.fell_back) == fell_back)
    return conditions


def attempt_counts(*, session: Session, job_id: int) -> dict[int, int]:
    """Number of attempts per prompt id of a job."""
    query = (
        select(col(Attempt.prompt_id), func.count())
        .join(Prompt, col(Prompt.id) == col(Attempt.prompt_id))
        .where(col(Prompt.job_id) == job_id)
        .group_by(col(Attempt.prompt_id))
    )
    return {int(pid): int(n) for pid, n in session.execute(query)}
