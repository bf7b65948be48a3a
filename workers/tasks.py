"""Celery tasks: thin wrappers that decode ids and call plain functions.

Model-call failures are retried inside `workers.retry` (with the provider's Retry-After);
Celery's own autoretry is only for the infrastructure: a database or broker blip.
"""

import logging
from collections import defaultdict
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from models import Job, JobMode, get_engine, session_scope
from workers import reducer
from workers.answer import Outcome, answer_on_tier
from workers.app import CONTROL_QUEUE, app
from workers.inflight import run_all
from workers.settings import get_settings

log = logging.getLogger(__name__)
ROUTE_POOL = "route"  # the routers' own pool (the llm router makes calls too)

RELIABLE = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError, PoolTimeoutError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 10,
}


def _engine() -> Engine:
    return get_engine(get_settings().database_url)


def send_answer(prompt_ids: list[int], tier: str) -> None:
    answer.apply_async((prompt_ids, tier), queue=tier)


def follow_up(outcome: Outcome, prompt_id: int) -> None:
    if outcome.escalate_to:
        send_answer([prompt_id], outcome.escalate_to)
    if outcome.job_finished and outcome.job_id is not None:
        reduce.apply_async((outcome.job_id,), queue=CONTROL_QUEUE)


@app.task(name="distillery.answer", **RELIABLE)
def answer(prompt_ids: list[int], tier: str) -> None:
    """Answer prompts on `tier` concurrently; escalate or finish each as its outcome says."""
    settings = get_settings()
    size = settings.require_tier(tier).concurrency

    def one(prompt_id: int) -> None:
        outcome = answer_on_tier(prompt_id, tier, settings=settings, engine=_engine())
        follow_up(outcome, prompt_id)

    run_all(tier, size, one, prompt_ids)


@app.task(name="distillery.route", **RELIABLE)
def route(prompt_ids: list[int]) -> None:
    """Decide each prompt's tier with the job's router, then send the batch on, per tier."""
    from workers.routing import decide_tier

    settings = get_settings()
    decided = run_all(
        ROUTE_POOL,
        settings.router_concurrency,
        lambda prompt_id: decide_tier(prompt_id, settings=settings, engine=_engine()),
        prompt_ids,
    )
    by_tier: dict[str, list[int]] = defaultdict(list)
    for prompt_id, tier in zip(prompt_ids, decided, strict=True):
        if tier is not None:
            by_tier[tier].append(prompt_id)
    for tier, ids in by_tier.items():
        send_answer(ids, tier)


@app.task(name="distillery.reduce", **RELIABLE)
def reduce(job_id: int) -> None:
    """Write a finished teacher job's training file (route jobs have nothing to reduce)."""
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
