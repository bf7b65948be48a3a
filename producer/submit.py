"""Submitting a job: validate the whole file, store the job and its prompts in bulk, then
enqueue messages that carry prompt ids only."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.engine import Engine

from models import Job, JobMode, session_scope
from models.queries import create_job, unfinished_prompt_ids
from producer.readers import PromptInput, read_prompts
from workers.settings import Settings
from workers.teacher import teacher_params

Progress = Callable[[int], None]


class BrokerUnavailable(Exception):
    """Redis cannot be reached; nothing was stored."""


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: int
    total: int
    queue: str


def prompt_rows(prompts: Sequence[PromptInput]) -> list[dict[str, Any]]:
    return [{"messages": p.messages, "custom_id": p.custom_id, "meta": p.metadata} for p in prompts]


def check_broker(app: Celery) -> None:
    """Fail before storing anything when the broker is down, so a job is never half-submitted."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        raise BrokerUnavailable(f"cannot reach the broker ({type(exc).__name__}: {exc})") from None


def enqueue(
    app: Celery, task_name: str, prompt_ids: Sequence[int], *, queue: str, batch: int,
    progress: Progress | None = None,
) -> None:
    """Publish one message per `batch` prompt ids over a single connection."""
    with app.producer_or_acquire() as producer:
        for start in range(0, len(prompt_ids), batch):
            chunk = list(prompt_ids[start : start + batch])
            app.send_task(task_name, (chunk,), queue=queue, producer=producer)
            if progress:
                progress(len(chunk))


def submit_teacher_job(
    path: Path, *, settings: Settings, engine: Engine, app: Celery, name: str | None = None,
    overrides: dict[str, Any] | None = None, progress: Progress | None = None,
) -> Submitted:
    prompts = read_prompts(path)  # raises InputFileError listing every bad line
    params = teacher_params(settings.teacher, **(overrides or {}))
    tier = settings.require_tier(params["tier"], "--tier")
    tier.api_key(params["tier"])  # a missing key variable fails now, not in every worker
    check_broker(app)
    with session_scope(engine) as session:
        job = create_job(
            session=session, mode=JobMode.TEACHER, prompts=prompt_rows(prompts),
            name=name or path.name, params=params, source=str(path),
        )
        assert job.id is not None
        job_id = job.id
    return _enqueue_job(app, engine, job_id, queue=params["tier"], batch=settings.enqueue_batch, progress=progress)


def _enqueue_job(
    app: Celery, engine: Engine, job_id: int, *, queue: str, batch: int, progress: Progress | None
) -> Submitted:
    with session_scope(engine) as session:
        ids = unfinished_prompt_ids(session=session, job_id=job_id)
    enqueue(app, "distillery.teach", ids, queue=queue, batch=batch, progress=progress)
    return Submitted(job_id, len(ids), queue)


def resume_job(*, job: Job, settings: Settings, engine: Engine, app: Celery) -> Submitted:
    """Re-enqueue every prompt of a job that is not terminal; redelivered duplicates are
    harmless because workers skip prompts that already have their final answer."""
    assert job.id is not None
    check_broker(app)
    queue = job.params["tier"]
    settings.require_tier(queue, f"job {job.id}")
    return _enqueue_job(app, engine, job.id, queue=queue, batch=settings.enqueue_batch, progress=None)
