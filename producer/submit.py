"""Submitting a job: validate the whole file, store the job and its prompts in bulk, then
enqueue messages that carry prompt ids only."""

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.engine import Engine

from models import Job, JobMode, session_scope
from models.queries import create_job
from producer.context_window import context_limit, fit_to_context
from producer.errors import BrokerUnavailable, UserError
from producer.readers import PromptInput, read_prompts
from workers.app import ANSWER_TASK, ROUTE_TASK
from workers.dispatch import Progress, enqueue, send_unfinished
from workers.errors import ExitCode
from workers.job_settings import AnyJobSettings, RouteSettings, TeacherSettings
from workers.routers import validate_router
from workers.settings import Settings

__all__ = ["ANSWER_TASK", "ROUTE_TASK", "enqueue", "resume_job", "submit_job"]


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


def job_settings(
    mode: JobMode, settings: Settings, *, router: str | None, overrides: dict[str, Any]
) -> AnyJobSettings:
    """The job's frozen settings, validated: every tier it may call exists and has its key."""
    job: AnyJobSettings
    if mode == JobMode.TEACHER:
        job = TeacherSettings.from_config(settings, **overrides)
        if job.batched and job.budgeted:
            # The batch path reserves nothing yet: a cap it ignored would be a false promise.
            raise UserError(
                "budget caps (--max-cost, max_cost_usd) are not applied on the Batch API path "
                "yet; submit with --via online to cap this job, or leave the cap out "
                "(--dry-run shows the batch estimate)",
                ExitCode.USAGE,
            )
    else:
        teacher_only = ("tier", "via", "batch_fallback")
        overrides = {k: v for k, v in overrides.items() if k not in teacher_only}
        job = RouteSettings.from_config(settings, router=router, **overrides)
        validate_router(job.router, settings=settings, classifier_path=job.classifier)
    for name in job.tiers:
        settings.require_tier(name, "--tier").api_key()  # a missing key fails now, not later
    return job


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
    job = job_settings(mode, settings, router=router, overrides=overrides or {})
    # raises PromptTooLong listing every prompt over its tier's context, before any storing
    fitted = fit_to_context(prompts, limit=context_limit(job, settings), job=job, source=str(path))
    check_broker(app)
    with session_scope(engine) as session:
        stored = create_job(
            session=session,
            mode=mode,
            prompts=prompt_rows(fitted.prompts),
            name=name or path.name,
            router=job.router if isinstance(job, RouteSettings) else None,
            params=job.to_params(),
            source=str(path),
        )
        assert stored.id is not None
        job_id = stored.id
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
    """Send every prompt without a final answer where it is due (workers.dispatch)."""
    total, queue = send_unfinished(
        app, engine, job_id, batch=settings.enqueue_batch, progress=progress
    )
    return Submitted(job_id, total, queue)


def resume_job(*, job: Job, settings: Settings, engine: Engine, app: Celery) -> Submitted:
    """Re-enqueue every prompt of a job that is not terminal; redelivered duplicates are
    harmless because workers skip prompts that already have their final answer."""
    assert job.id is not None
    check_broker(app)
    return enqueue_unfinished(app, engine, job.id, settings=settings)
