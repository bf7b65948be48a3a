"""Celery tasks: thin wrappers that decode ids and call plain functions.

Model-call failures are retried inside `workers.retry` (with the provider's Retry-After);
Celery's own autoretry is only for the infrastructure: a database or broker blip.
"""

import asyncio
import logging
from collections import defaultdict
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

from celery.signals import worker_ready
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from models import Job, JobMode, JobStatus, get_engine, session_scope
from models.outcomes import Written
from models.queries import has_training_file, unreduced_teacher_jobs
from workers import reducer
from workers.aclient import ChatClient
from workers.answer import Context, Outcome, RunningJobs, WorkItem, answer_prompt, load_work
from workers.app import CONTROL_QUEUE, app
from workers.callloop import CallLoop, call_loop
from workers.calls import async_rate_limiter
from workers.inflight import run_all
from workers.ledger import ledger_for
from workers.settings import get_settings

log = logging.getLogger(__name__)
ROUTE_POOL = "route"  # the routers' own pool (the llm router makes calls too)

RELIABLE = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    # The infrastructure: the database, and Redis (the rate limiter's store).
    "autoretry_for": (OperationalError, PoolTimeoutError, RedisError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 10,
}


def _engine() -> Engine:
    return get_engine(get_settings().database_url)


def send_answer(prompt_ids: list[int], tier: str) -> None:
    answer.apply_async((prompt_ids, tier), queue=tier)


def follow_up(outcome: Outcome, prompt_id: int) -> None:
    """Runs once the step is committed (in the ledger thread)."""
    try:
        if outcome.escalate_to:
            send_answer([prompt_id], outcome.escalate_to)
        if outcome.job_finished and outcome.job_id is not None:
            reduce.apply_async((outcome.job_id,), queue=CONTROL_QUEUE)
    except Exception:  # the step is committed; only the next message is missing
        log.exception(
            "prompt %s: could not send its next step; `distillery resume %s` re-sends it",
            prompt_id,
            outcome.job_id,
        )


def _context(loop: CallLoop) -> Context:
    """This worker's answering context, made in (and for) its call loop, and made again
    only when the settings are (the embedded worker, or tests, reloading them)."""
    settings = get_settings()
    context: Context | None = loop.state.get("context")
    if context is None or context.settings is not settings:
        if context is not None:  # kept referenced until done (asyncio holds tasks weakly)
            closing = asyncio.ensure_future(context.client.close())
            loop.state.setdefault("closing", set()).add(closing)
            closing.add_done_callback(loop.state["closing"].discard)
        context = Context(
            settings=settings,
            ledger=ledger_for(settings.database_url),
            jobs=RunningJobs(get_engine(settings.database_url)),
            limiter=async_rate_limiter(settings.redis_url),
            client=ChatClient(),
            follow_up=follow_up,
        )
        loop.state["context"] = context
    return context


@app.task(name="distillery.answer", **RELIABLE)
def answer(prompt_ids: list[int], tier: str) -> None:
    """Answer a message's prompts on `tier` in the call loop, at most the tier's
    `concurrency` calls in flight per worker; return once all they recorded is committed."""
    settings = get_settings()
    cap = settings.require_tier(tier).concurrency
    work = load_work(_engine(), prompt_ids, tier)
    if not work:
        return
    loop = call_loop()

    async def answer_all() -> list[Future[Written]]:
        ctx, in_flight = _context(loop), loop.in_flight(tier, cap)

        async def one(item: WorkItem) -> list[Future[Written]]:
            # The slot is held until the prompt's records are committed: a worker never
            # has more calls paid for but not on record than its tier's `concurrency`
            # (the most a kill -9 can lose).
            async with in_flight:
                recorded = await answer_prompt(item, tier, ctx)
                if recorded:
                    await asyncio.wait([asyncio.wrap_future(f) for f in recorded])
                return recorded

        # Every prompt runs to its end even when another fails (e.g. Redis went away for
        # it): the failure is raised afterwards, and the retried message skips what is done.
        steps = await asyncio.gather(*(one(item) for item in work), return_exceptions=True)
        recorded: list[Future[Written]] = []
        for step in steps:
            if isinstance(step, BaseException):
                raise step
            recorded.extend(step)
        return recorded

    recorded = loop.run(answer_all())
    wait(recorded)
    for future in recorded:  # a failed write: Celery retries the message (done ones skip)
        error = future.exception()
        if error is not None:
            raise error


@app.task(name="distillery.route", **RELIABLE)
def route(prompt_ids: list[int]) -> None:
    """Decide each prompt's tier with the job's router, then send the batch on, per tier."""
    from workers.routing import decide_tiers

    settings = get_settings()
    decided = decide_tiers(
        prompt_ids,
        settings=settings,
        engine=_engine(),
        decide_all=lambda decide, items: run_all(
            ROUTE_POOL, settings.router_concurrency, decide, items
        ),
    )
    by_tier: dict[str, list[int]] = defaultdict(list)
    for prompt_id, tier in decided.items():
        by_tier[tier].append(prompt_id)
    for tier, ids in by_tier.items():
        send_answer(ids, tier)


@app.task(name="distillery.reduce", **RELIABLE)
def reduce(job_id: int) -> None:
    """Write a finished teacher job's training file, once: a second message for the same
    job (the start-up sweep below) finds the file and stops. Route jobs have nothing to
    reduce; `distillery reduce JOB` writes a new file on purpose, without this task."""
    settings = get_settings()
    engine = _engine()
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None or job.mode != JobMode.TEACHER or job.status != JobStatus.FINISHED:
            return
        if has_training_file(session=session, job_id=job_id):
            log.info("job %s already has a training file", job_id)
            return
    out = default_training_path(settings.output_dir, job_id)
    result = reducer.reduce_job(engine=engine, job_id=job_id, out=out, config=settings.reducer)
    log.info("job %s: %d training examples in %s", job_id, result.record.examples, out)


@worker_ready.connect
def reduce_what_was_missed(sender: Any = None, **_: Any) -> None:
    """At a worker's start: reduce the finished teacher jobs whose reduce message was lost
    (sent after the commit that finished the job, so a crash in between loses it)."""
    consumed = getattr(getattr(sender, "app", app).amqp.queues, "consume_from", None) or {}
    if consumed and CONTROL_QUEUE not in consumed:
        return  # only workers that run reducers look
    try:
        with session_scope(_engine()) as session:
            missed = unreduced_teacher_jobs(session=session)
    except Exception:  # the tables may not exist yet; the sweep is a courtesy
        log.warning("could not look for unreduced jobs", exc_info=True)
        return
    for job_id in missed:
        log.warning("job %s finished without a training file: reducing it now", job_id)
        reduce.apply_async((job_id,), queue=CONTROL_QUEUE)


def default_training_path(output_dir: Path, job_id: int) -> Path:
    return output_dir / f"job-{job_id}" / "train.jsonl"
