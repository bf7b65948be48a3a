"""Submitting a job: validate the whole file, store the job and its prompts in bulk, then
enqueue messages that carry prompt ids only."""

import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.engine import Engine

from models import Job, JobMode, session_scope
from models.queries import create_job, unfinished_prompts
from producer.errors import BrokerUnavailable
from producer.limits import context_limit, fit_to_context
from producer.readers import PromptInput, read_prompts
from workers.app import CONTROL_QUEUE
from workers.routers import validate_router
from workers.routing import route_params
from workers.settings import Settings
from workers.teacher import teacher_params

Progress = Callable[[int], None]
ANSWER_TASK = "distillery.answer"
ROUTE_TASK = "distillery.route"


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: int
    total: int
    queue: str
    truncated: int = 0  # prompts cut to fit their tier's context (context_policy = "truncate")


def print_notice(message: str) -> None:
    # stderr, so `submit --json` keeps stdout machine-readable.
    print(f"note: {message}", file=sys.stderr)


def prompt_rows(prompts: Sequence[PromptInput]) -> list[dict[str, Any]]:
    return [{"messages": p.messages, "custom_id": p.custom_id, "meta": p.metadata} for p in prompts]


def check_broker(app: Celery) -> None:
    """Fail before storing anything when the broker is down, so a job is never half-submitted."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        reason = f"cannot reach the broker ({type(exc).__name__}: {exc})"
        raise BrokerUnavailable.at(app.conf.broker_url, reason) from None


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


def job_params(
    mode: JobMode, settings: Settings, *, router: str | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The job's frozen settings, validated: every tier it may call exists and has its key."""
    if mode == JobMode.TEACHER:
        params = teacher_params(settings.teacher, **overrides)
        tiers = [params["tier"]]
    else:
        overrides = {k: v for k, v in overrides.items() if k != "tier"}
        params = route_params(settings, router=router, **overrides)
        validate_router(params["router"], settings=settings, classifier_path=params["classifier"])
        tiers = params["tiers"]
    for name in tiers:
        settings.require_tier(name, "--tier").api_key(
            name
        )  # a missing key fails now, not in workers
    return params


def submit_job(
    path: Path,
    *,
    mode: JobMode,
    settings: Settings,
    engine: Engine,
    app: Celery,
    name: str | None = None,
    router: str | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
    notify: Callable[[str], None] = print_notice,
) -> Submitted:
    prompts = read_prompts(path)  # raises InputFileError listing every bad line
    params = job_params(mode, settings, router=router, overrides=overrides or {})
    # raises PromptTooLong listing every prompt over its tier's context, before any storing
    fitted = fit_to_context(
        prompts, limit=context_limit(mode, params, settings), params=params, source=str(path)
    )
    check_broker(app)
    with session_scope(engine) as session:
        job = create_job(
            session=session,
            mode=mode,
            prompts=prompt_rows(fitted.prompts),
            name=name or path.name,
            router=params.get("router"),
            params=params,
            source=str(path),
        )
        assert job.id is not None
        job_id = job.id
    submitted = enqueue_unfinished(app, engine, job_id, settings=settings, progress=progress)
    for notice in fitted.notices:
        notify(notice)
    return replace(submitted, truncated=fitted.truncated)


def enqueue_unfinished(
    app: Celery,
    engine: Engine,
    job_id: int,
    *,
    settings: Settings,
    progress: Progress | None = None,
) -> Submitted:
    """Send every prompt without a final answer where it is due: teacher prompts to the
    teacher tier; route prompts to the router, or to the tier they last reached."""
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        mode, params = job.mode, job.params
        targets = unfinished_prompts(session=session, job_id=job_id)
    by_queue: dict[str | None, list[int]] = defaultdict(list)
    for prompt_id, tier in targets:
        by_queue[params["tier"] if mode == JobMode.TEACHER else tier].append(prompt_id)
    batch = settings.enqueue_batch
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
    queue = params["tier"] if mode == JobMode.TEACHER else CONTROL_QUEUE
    return Submitted(job_id, len(targets), queue)


def resume_job(*, job: Job, settings: Settings, engine: Engine, app: Celery) -> Submitted:
    """Re-enqueue every prompt of a job that is not terminal; redelivered duplicates are
    harmless because workers skip prompts that already have their final answer."""
    assert job.id is not None
    check_broker(app)
    return enqueue_unfinished(app, engine, job.id, settings=settings)
