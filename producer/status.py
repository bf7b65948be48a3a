"""What a job looks like now: counts, cost, tokens, its training file. Plain data, so the
CLI can print it as a table or as JSON."""

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from models import Attempt, Job, Prompt, TrainingFile
from models.types import utcnow
from workers.errors import NotFound


class JobNotFound(NotFound):
    """No job with this id."""


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} not found (list jobs with: distillery jobs)")
    return job


def job_summary(session: Session, job_id: int) -> dict[str, Any]:
    job = get_job(session, job_id)
    return {
        "id": job.id,
        "name": job.name,
        "mode": job.mode,
        "status": job.status,
        "total": job.total,
        "completed": job.completed,
        "failed": job.failed,
        "cancelled": job.cancelled,
        "pending": job.total - job.done,
        "fell_back": job.fell_back,
        **_usage(session, job_id),
        "attempts": _attempt_count(session, job_id),
        "created_at": _iso(job.created_at),
        "finished_at": _iso(job.finished_at),
        "elapsed_s": _elapsed(job),
        "training_file": _training_file(session, job_id),
    }


def _usage(session: Session, job_id: int) -> dict[str, Any]:
    query = select(
        func.coalesce(func.sum(Prompt.prompt_tokens), 0),
        func.coalesce(func.sum(Prompt.completion_tokens), 0),
        func.coalesce(func.sum(Prompt.cost_usd), 0.0),
    ).where(col(Prompt.job_id) == job_id)
    prompt_tokens, completion_tokens, cost = session.execute(query).one()
    return {
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "cost_usd": round(float(cost), 6),
    }


def _attempt_count(session: Session, job_id: int) -> int:
    query = (
        select(func.count())
        .select_from(Attempt)
        .join(Prompt, col(Prompt.id) == col(Attempt.prompt_id))
        .where(col(Prompt.job_id) == job_id)
    )
    return int(session.execute(query).scalar_one())


def _training_file(session: Session, job_id: int) -> dict[str, Any] | None:
    query = (
        select(TrainingFile)
        .where(col(TrainingFile.job_id) == job_id)
        .order_by(col(TrainingFile.id).desc())
    )
    record = session.execute(query.limit(1)).scalar_one_or_none()
    if record is None:
        return None
    return {
        "path": record.path,
        "examples": record.examples,
        "validation_path": record.validation_path,
        "validation_examples": record.validation_examples,
        "rejected": record.rejected,
        "sha256": record.sha256,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _elapsed(job: Job) -> float:
    end = job.finished_at or utcnow()
    return round((end - job.created_at).total_seconds(), 3)


def list_jobs(session: Session, limit: int = 20) -> list[Job]:
    return list(session.execute(select(Job).order_by(col(Job.id).desc()).limit(limit)).scalars())
