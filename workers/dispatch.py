"""Sending a job's unfinished prompts where they are due — the one implementation behind
submit, `distillery resume` (a human) and the sweeper (workers.sweeper, no human)."""

from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.engine import Engine

from models import TERMINAL_PROMPT_STATUSES, Job, session_scope
from models.batches import job_batches
from models.queries import unfinished_prompts
from models.tables import PROMPTS
from workers.app import ANSWER_TASK, BATCH_POLL_TASK, BATCH_SUBMIT_TASK, CONTROL_QUEUE, ROUTE_TASK
from workers.job_settings import TeacherSettings, load_job_settings

Progress = Callable[[int], None]


def enqueue(
    app: Celery,
    task_name: str,
    prompt_ids: Sequence[int],
    *,
    queue: str,
    batch: int,
    extra_args: tuple[Any, ...] = (),
    progress: Progress | None = None,
) -> None:
    """Publish one message per `batch` prompt ids over a single connection."""
    with app.producer_or_acquire() as producer:
        for start in range(0, len(prompt_ids), batch):
            chunk = list(prompt_ids[start : start + batch])
            app.send_task(task_name, (chunk, *extra_args), queue=queue, producer=producer)
            if progress:
                progress(len(chunk))


def send_unfinished(
    app: Celery,
    engine: Engine,
    job_id: int,
    *,
    batch: int,
    only: Collection[int] | None = None,
    progress: Progress | None = None,
) -> tuple[int, str]:
    """Send every prompt without a final answer (of `only`, when given) where it is due:
    teacher prompts to the teacher tier; route prompts to the router, or to the tier they
    last reached. Returns how many were sent, and the job's first queue."""
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        settings_of_job = load_job_settings(job.mode, job.params)
        targets = unfinished_prompts(session=session, job_id=job_id)
    if only is not None:
        targets = [(pid, tier) for pid, tier in targets if pid in only]
    if isinstance(settings_of_job, TeacherSettings) and settings_of_job.batched:
        send_batch_work(app, engine, job_id, tier=settings_of_job.tier, batch=batch)
        if progress:
            progress(len(targets))
        return len(targets), CONTROL_QUEUE
    teacher = settings_of_job.tier if isinstance(settings_of_job, TeacherSettings) else None
    by_queue: dict[str | None, list[int]] = defaultdict(list)
    for prompt_id, tier in targets:
        by_queue[teacher or tier].append(prompt_id)
    for tier, ids in by_queue.items():
        if tier is None:
            enqueue(app, ROUTE_TASK, ids, queue=CONTROL_QUEUE, batch=batch, progress=progress)
        else:
            enqueue(
                app,
                ANSWER_TASK,
                ids,
                queue=tier,
                batch=batch,
                extra_args=(tier,),
                progress=progress,
            )
    return len(targets), teacher or CONTROL_QUEUE


def send_batch_work(app: Celery, engine: Engine, job_id: int, *, tier: str, batch: int) -> None:
    """What a batch job needs to go on, from the ledger alone (after a Redis flush too): a
    poll for each of its batches whose results are not committed (their provider ids are in
    the `batches` table: nothing is sent again), online calls for the prompts a batch handed
    to online fallback, and a packer for the prompts no batch holds (and the batches left
    preparing)."""
    with engine.connect() as conn:
        rows = job_batches(conn=conn, job_id=job_id)
        handed_online = _handed_online(conn, [r.id for r in rows if r.ingested_at is not None])
    for row in rows:
        if row.ingested_at is None and row.provider_batch_id is not None:
            app.send_task(BATCH_POLL_TASK, (row.id, 1.0), queue=CONTROL_QUEUE)
    if handed_online:
        enqueue(app, ANSWER_TASK, handed_online, queue=tier, batch=batch, extra_args=(tier,))
    app.send_task(BATCH_SUBMIT_TASK, (job_id,), queue=CONTROL_QUEUE)


def _handed_online(conn: Any, ingested_batches: list[int]) -> list[int]:
    """Open prompts still marked with a batch whose results are committed: that batch gave
    them to online calls (`batch_fallback = "online"`)."""
    if not ingested_batches:
        return []
    query = select(PROMPTS.c.id).where(
        PROMPTS.c.batch_id.in_(ingested_batches),
        PROMPTS.c.status.not_in(TERMINAL_PROMPT_STATUSES),
    )
    return list(conn.execute(query).scalars())
