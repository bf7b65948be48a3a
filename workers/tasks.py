"""Celery tasks: thin wrappers that decode ids and call plain functions.

Model-call failures are retried inside `workers.retry` (with the provider's Retry-After);
Celery's own autoretry is only for the infrastructure: a database or broker blip.
"""

import logging
from pathlib import Path

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from models import JobMode, get_engine
from models.db import session_scope
from models.tables import Job
from workers import reducer, teacher
from workers.app import CONTROL_QUEUE, app
from workers.settings import get_settings

log = logging.getLogger(__name__)

RELIABLE = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError, PoolTimeoutError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 10,
}


def _engine():  # type: ignore[no-untyped-def]
    return get_engine(get_settings().database_url)


@app.task(name="distillery.teach", **RELIABLE)
def teach(prompt_ids: list[int]) -> None:
    """Answer prompts with the teacher tier; start the reducer after the job's last one."""
    settings = get_settings()
    for prompt_id in prompt_ids:
        job_id = teacher.answer_prompt(prompt_id, settings=settings, engine=_engine())
        if job_id is not None:
            log.info("job %s finished; reducing", job_id)
            reduce.apply_async((job_id,), queue=CONTROL_QUEUE)


@app.task(name="distillery.reduce", **RELIABLE)
def reduce(job_id: int) -> None:
    settings = get_settings()
    engine = _engine()
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None or job.mode != JobMode.TEACHER:
            return
    out = default_training_path(settings.output_dir, job_id)
    result = reducer.reduce_job(engine=engine, job_id=job_id, out=out, config=settings.reducer)
    log.info("job %s: %d training examples in %s", job_id, result.record.examples, out)


def default_training_path(output_dir: Path, job_id: int) -> Path:
    return output_dir / f"job-{job_id}" / "train.jsonl"
