"""Celery tasks: thin wrappers that decode ids, run the plain step functions in the worker's
call loop, and send what follows from the committed results (results flow down: no step
calls back up into a task).

Model-call failures are retried inside `workers.caller` (with the provider's Retry-After);
Celery's own autoretry is only for the infrastructure: a database or broker blip.
"""

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from models import Job, JobMode, JobStatus, session_scope
from models.batches import batch_row, job_params
from models.outcomes import Record
from models.queries import has_training_file, unreduced_teacher_jobs
from workers import reducer
from workers.answer import answer_message, load_work
from workers.app import (
    ANSWER_TASK,
    BATCH_POLL_TASK,
    BATCH_SUBMIT_TASK,
    CONTROL_QUEUE,
    JUDGE_TASK,
    REDUCE_TASK,
    ROUTE_TASK,
    TRAIN_TASK,
    app,
)
from workers.batches.client import BatchClient, BatchProviderError
from workers.batches.ingest import Ingested, ingest
from workers.batches.poll import poll_batch
from workers.batches.submit import start_job_batches
from workers.context import start_worker_context, stop_worker_context, worker_context
from workers.errors import DistilleryError
from workers.heap import settle_for_serving
from workers.job_settings import TeacherSettings, load_job_settings
from workers.judge import judge_message, load_judge_work
from workers.recovery import recovering, start_recovery, stop_recovery
from workers.routing import route_message
from workers.settings import get_settings

log = logging.getLogger(__name__)

RELIABLE = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    # The infrastructure: the database, and Redis (the rate limiter's store).
    "autoretry_for": (OperationalError, PoolTimeoutError, RedisError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 10,
}


@worker_init.connect
def open_context(**_: Any) -> None:
    """`distillery worker` starting: build what its tasks share, once, and start its part
    in recovery (its leases' heartbeat and its sweeper)."""
    settings = get_settings()
    start_recovery(settings, start_worker_context(settings).engine)


@worker_shutdown.connect
def close_context(**_: Any) -> None:
    stop_recovery()
    stop_worker_context()


def send_answer(prompt_ids: list[int], tier: str) -> None:
    answer.apply_async((prompt_ids, tier), queue=tier)


def send_follow_ups(records: Iterable[Record]) -> None:
    """Escalations (one message per next tier) and the reducer of each finished job. The
    records are committed; if a send fails, only the next message is missing, and the
    sweeper (or `distillery resume JOB`) re-sends it."""
    escalations: dict[str, list[int]] = defaultdict(list)
    finished: list[int] = []
    for record in records:
        if record.escalate_to:
            escalations[record.escalate_to].append(record.prompt_id)
        if record.job_finished:
            finished.append(record.job_id)
    try:
        for tier, prompt_ids in escalations.items():
            send_answer(prompt_ids, tier)
        for job_id in finished:
            reduce.apply_async((job_id,), queue=CONTROL_QUEUE)
    except Exception:
        log.exception("could not send the next step; the sweeper re-sends it")


@app.task(name=ANSWER_TASK, **RELIABLE)
def answer(prompt_ids: list[int], tier: str) -> None:
    """Answer a message's prompts on `tier`; return once all they recorded is committed
    and what follows from it is sent."""
    ctx = worker_context()
    tier_config = ctx.settings.require_tier(tier)
    work = load_work(ctx.engine, prompt_ids, tier)
    if not work:
        return
    answered = ctx.loop.run(answer_message(work, tier_config, ctx))
    send_follow_ups(answered.records)
    if answered.error is not None:  # Celery retries the message; what is done skips
        raise answered.error


@app.task(name=ROUTE_TASK, **RELIABLE)
def route(prompt_ids: list[int]) -> None:
    """Decide each prompt's tier with the job's router, then send the batch on, per tier."""
    ctx = worker_context()
    for tier, ids in ctx.loop.run(route_message(prompt_ids, ctx)).items():
        send_answer(ids, tier)


@app.task(name=REDUCE_TASK, **RELIABLE)
def reduce(job_id: int) -> None:
    """Write a finished teacher job's training file, once: a second message for the same
    job (a re-sent one) finds the file and stops, or, run at the same moment, keeps the
    first one's row. Route jobs have nothing to
    reduce; `distillery reduce JOB` writes a new file on purpose, without this task."""
    ctx = worker_context()
    with session_scope(ctx.engine) as session:
        job = session.get(Job, job_id)
        if job is None or job.mode != JobMode.TEACHER or job.status != JobStatus.FINISHED:
            return
        if has_training_file(session=session, job_id=job_id):
            log.info("job %s already has a training file", job_id)
            return
    out = ctx.settings.training_path(job_id)
    config = ctx.settings.reducer
    result = reducer.reduce_job(engine=ctx.engine, job_id=job_id, out=out, config=config, once=True)
    log.info("job %s: %d training examples in %s", job_id, result.record.examples, out)


def send_batch_poll(batch_id: int, delay_s: float) -> None:
    batch_poll.apply_async((batch_id, delay_s), countdown=delay_s, queue=CONTROL_QUEUE)


def send_batch_follow_ups(ingested: Ingested, job_id: int, tier: str) -> None:
    """After a batch's results are committed: the reducer of a finished job, and the
    lines to try again (online, or in a new batch)."""
    send_follow_ups(ingested.records)
    if ingested.retry_online:
        send_answer(ingested.retry_online, tier)
    if ingested.retry_in_batch:
        batch_submit.apply_async((job_id,), queue=CONTROL_QUEUE)


# A provider that cannot be reached while files are uploaded: the message is retried (the
# claimed prompts wait in their `preparing` row, which the retry finishes).
BATCH_RELIABLE = {**RELIABLE, "autoretry_for": (*RELIABLE["autoretry_for"], BatchProviderError)}  # type: ignore[misc]


@app.task(name=BATCH_SUBMIT_TASK, **BATCH_RELIABLE)
def batch_submit(job_id: int) -> None:
    """Pack a batch job's unanswered prompts that no batch holds into provider batches,
    and send each one's first poll."""
    ctx = worker_context()
    engine = ctx.ledger.engine
    with engine.connect() as conn:
        found = job_params(conn=conn, job_id=job_id)
    if found is None or found[1] != JobStatus.RUNNING:
        return
    job = load_job_settings(found[0], found[2])
    assert isinstance(job, TeacherSettings)
    tier = ctx.settings.require_tier(job.tier)
    with BatchClient(tier) as client:
        started = start_job_batches(engine, job_id, tier, client)
    send_follow_ups(started.cached)  # the reducer, when the cache answered the job's last
    for batch_id in started.polling:
        send_batch_poll(batch_id, tier.batch_poll_s)
    for batch_id, refused in started.refused:
        ingested = ingest(engine, batch_id, refused, (b"", b""), tier=tier, latency_ms=0.0)
        send_batch_follow_ups(ingested, job_id, tier.name)


@app.task(name=BATCH_POLL_TASK, **RELIABLE)
def batch_poll(batch_id: int, delay_s: float) -> None:
    """One look at a provider batch; the next look, or its results, follow."""
    ctx = worker_context()
    engine = ctx.ledger.engine
    with engine.connect() as conn:
        row = batch_row(conn=conn, batch_id=batch_id)
    if row is None:
        return
    tier = ctx.settings.require_tier(row.tier)
    with BatchClient(tier) as client:
        polled = poll_batch(engine, batch_id, delay_s, tier, client)
    if polled.next_delay_s is not None:
        send_batch_poll(batch_id, polled.next_delay_s)
    if polled.ingested is not None:
        send_batch_follow_ups(polled.ingested, row.job_id, tier.name)


@app.task(name=JUDGE_TASK, **RELIABLE)
def judge(run_id: int, prompt_ids: list[int], tier: str) -> None:
    """Score a batch of a job's answers on the judge tier (workers.judge); sent to that
    tier's queue, so its workers, limits and retries apply."""
    ctx = worker_context()
    tier_config = ctx.settings.require_tier(tier)
    work = load_judge_work(ctx.engine, run_id, prompt_ids)
    if work:
        ctx.loop.run(judge_message(run_id, work, tier_config, ctx))


@app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def train(fine_tune_id: int) -> None:
    """One local training run (workers.training.run). Not retried: a failure is recorded
    on its fine_tunes row, and a rerun is the user's call."""
    from workers.training.run import train_fine_tune  # torch: only in training workers

    try:
        train_fine_tune(worker_context().engine, fine_tune_id)
    except DistilleryError as exc:
        log.warning("fine-tune %s failed: %s", fine_tune_id, exc)


@worker_ready.connect
def settle_heap(**_: Any) -> None:
    """Start-up is over: tune the garbage collector for serving (workers/heap.py)."""
    log.info("garbage collector set for serving: %d start-up objects frozen", settle_for_serving())


@worker_ready.connect
def reduce_what_was_missed(sender: Any = None, **_: Any) -> None:
    """At a worker's start: reduce the finished teacher jobs whose reduce message was lost
    (sent after the commit that finished the job, so a crash in between loses it)."""
    consumed = getattr(getattr(sender, "app", app).amqp.queues, "consume_from", None) or {}
    if consumed and CONTROL_QUEUE not in consumed:
        return  # only workers that run reducers look
    if recovering():
        return  # the sweeper sends them, once, unless a reduce message is already out
    try:
        with session_scope(worker_context().engine) as session:
            missed = unreduced_teacher_jobs(session=session)
    except Exception:  # the tables may not exist yet; the sweep is a courtesy
        log.warning("could not look for unreduced jobs", exc_info=True)
        return
    for job_id in missed:
        log.warning("job %s finished without a training file: reducing it now", job_id)
        reduce.apply_async((job_id,), queue=CONTROL_QUEUE)
