"""What the job commands do, apart from parsing options: submit (and wait), summarise,
reduce, resume, cancel, list. Printing lives here too, next to the data it prints."""

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import JobMode, JobStatus, session_scope
from models.queries import cancel_job
from producer.batch_status import cancel_provider_batches, print_batches
from producer.errors import UserError
from producer.progress import wait_for_job, wait_for_training_file
from producer.status import cache_and_budget_rows, get_job, job_summary, list_jobs
from producer.submit import print_notice, resume_job, submit_job
from workers.errors import ExitCode
from workers.exports import SUFFIXES
from workers.settings import Settings


def summary(engine: Engine, job_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """The job's summary; with `settings`, priced by its tiers (what batches saved)."""
    with Session(engine) as session:
        return job_summary(session, job_id, settings.tiers if settings else None)


def _worker_context(settings: Settings) -> AbstractContextManager[Any]:
    """Without REDIS_URL there is no broker between processes: run a worker in this one,
    consuming every tier's queue."""
    if settings.redis_url:
        return nullcontext()
    from workers.app import CONTROL_QUEUE, app
    from workers.embedded import embedded_worker

    # Messages at once; each message's prompts run as coroutines in the worker's call loop.
    concurrency = 2 * len(settings.tiers) + 2
    return embedded_worker(app, queues=[*settings.tiers, CONTROL_QUEUE], concurrency=concurrency)


def submit_and_maybe_wait(
    path: Path,
    *,
    mode: JobMode,
    settings: Settings,
    engine: Engine,
    name: str | None,
    router: str | None,
    overrides: dict[str, Any],
    wait: bool,
    console: Console | None,
) -> dict[str, Any]:
    from workers.app import app

    with _worker_context(settings):
        submitted = submit_job(
            path,
            mode=mode,
            settings=settings,
            engine=engine,
            app=app,
            name=name,
            router=router,
            overrides=overrides,
        )
        if console:
            console.print(
                f"job [bold]{submitted.job_id}[/]: {submitted.total} prompts "
                f"enqueued on '{submitted.queue}'"
            )
        if wait:
            job = wait_for_job(engine, submitted.job_id, console=console)
            if job.mode == JobMode.TEACHER and job.status == JobStatus.FINISHED:
                wait_for_training_file(engine, submitted.job_id)
    return summary(engine, submitted.job_id, settings)


def reduce(
    job_id: int,
    *,
    settings: Settings,
    engine: Engine,
    out: Path | str | None,
    changes: dict[str, Any] | None = None,
    min_length: int | None = None,
    validation_fraction: float | None = None,
) -> dict[str, Any]:
    """Reduce again with the config's [reducer] settings and `changes` (None: unchanged).
    Every row left out is a `rejections` row (`distillery results JOB --rejected`); when all
    are, nothing is written and the error says why and what to do."""
    from workers.reducer import reduce_job, reducible_params, teacher_counter

    with Session(engine) as session:
        job = get_job(session, job_id)
    params = reducible_params(job, settings)  # teacher jobs, and live jobs' teacher answers
    given = {"min_length": min_length, "validation_fraction": validation_fraction}
    given.update(changes or {})  # the CLI's options, None where not given
    updates = {k: v for k, v in given.items() if v is not None}
    config = settings.reducer.model_validate({**settings.reducer.model_dump(), **updates})
    out = out or settings.training_path(job_id).with_suffix(SUFFIXES[config.format])
    counter = teacher_counter(params, settings)
    result = reduce_job(engine=engine, job_id=job_id, out=out, config=config, counter=counter)
    record = result.record
    summary = {
        "job_id": job_id,
        "path": record.path if record.examples else None,
        "format": record.format,
        "examples": record.examples,
        "validation_path": record.validation_path,
        "validation_examples": record.validation_examples,
        "rejected": record.rejected,
        "sha256": record.sha256,
        "card_path": record.card_path,
        "split": record.details.get("split"),
        "scores": record.details.get("scores"),
        "warnings": result.warnings,
        "unfinished_prompts": job.total - job.done,
    }
    if result.empty:
        raise UserError(nothing_kept_message(job_id, record.rejected), ExitCode.BAD_INPUT)
    return summary


def nothing_kept_message(job_id: int, rejected: dict[str, int]) -> str:
    if not rejected:
        return f"job {job_id} has no answers to reduce (no prompts); nothing was written"
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(rejected.items()))
    return (
        f"job {job_id}: all {sum(rejected.values())} answers were left out ({reasons}), so no "
        f"training file was written. See each one: distillery results {job_id} --rejected; "
        "then reduce again with other settings (no model calls are made)"
    )


def resume(job_id: int, *, settings: Settings, engine: Engine) -> int:
    from workers.app import app

    with Session(engine) as session:
        job = get_job(session, job_id)
    if job.status != JobStatus.RUNNING:
        return 0
    if job.mode == JobMode.LIVE:
        # A live prompt without an answer is a request in flight, or one whose caller got
        # an error when its gateway died: nobody waits for it any more.
        raise UserError(
            f"job {job_id} is a live job: its requests are answered by the gateway, and one "
            "left unanswered had its caller told so; nothing to resume",
            ExitCode.USAGE,
        )
    return resume_job(job=job, settings=settings, engine=engine, app=app).total


def cancel(job_id: int, *, engine: Engine, settings: Settings | None = None) -> int:
    """Cancel the job's unfinished prompts, then its provider batches (with `settings`)."""
    with session_scope(engine) as session:
        get_job(session, job_id)
        cancelled = cancel_job(session=session, job_id=job_id)
    if settings is not None:
        for provider_id in cancel_provider_batches(engine, job_id, settings):
            print_notice(
                f"could not reach the provider to cancel batch {provider_id}; the next poll "
                "of it tries again"
            )
    return cancelled


def recent(engine: Engine, limit: int) -> list[dict[str, Any]]:
    with Session(engine) as session:
        return [
            {
                "id": j.id,
                "name": j.name,
                "mode": j.mode,
                "status": j.status,
                "total": j.total,
                "completed": j.completed,
                "failed": j.failed,
                "created_at": j.created_at.isoformat(),
            }
            for j in list_jobs(session, limit)
        ]


def print_jobs(out: Console, rows: list[dict[str, Any]]) -> None:
    table = Table("id", "name", "mode", "status", "done", "failed", "created")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["name"] or "",
            row["mode"],
            row["status"],
            f"{row['completed']}/{row['total']}",
            str(row["failed"]),
            row["created_at"][:19],
        )
    out.print(table if rows else "no jobs yet: distillery submit FILE --wait")


def print_summary(out: Console, s: dict[str, Any]) -> None:
    table = Table(title=f"job {s['id']} ({s['mode']}, {s['status']})", show_header=False)
    table.add_row("prompts", str(s["total"]))
    table.add_row("succeeded", str(s["completed"]))
    table.add_row("failed", str(s["failed"]))
    if s["cancelled"]:
        table.add_row("cancelled", str(s["cancelled"]))
    table.add_row("pending", str(s["pending"]))
    table.add_row("model calls", str(s["attempts"]))
    table.add_row(
        "tokens (prompt / completion)", f"{s['prompt_tokens']:,} / {s['completion_tokens']:,}"
    )
    table.add_row("cost", f"${s['cost_usd']:.4f}")
    for label, value in cache_and_budget_rows(s):
        table.add_row(label, value)
    table.add_row("elapsed", f"{s['elapsed_s']:.1f} s")
    out.print(table)
    print_batches(out, s)
    training = s.get("training_file")
    if training:
        print_reduction(out, {**training, "warnings": []})
    elif s["status"] == JobStatus.RUNNING:
        out.print(f"still running: distillery status {s['id']} --watch")
    if s["failed"]:
        out.print(f"see the errors: distillery results {s['id']} --format csv | grep failed")


def print_reduction(out: Console, r: dict[str, Any]) -> None:
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(r["rejected"].items())) or "none"
    if not r["examples"]:
        out.print(f"[yellow]no training file:[/] every row was left out ({rejected})")
        return
    out.print(f"training file: [bold]{r['path']}[/] ({r['examples']} examples)")
    if r.get("validation_path"):
        out.print(f"validation file: {r['validation_path']} ({r['validation_examples']} examples)")
    leakage = (r.get("split") or {}).get("leakage") or {}
    if leakage.get("checked"):
        out.print(
            f"validation leakage: {leakage['moved_to_train']} of {leakage['checked']} "
            f"candidates moved to training (prompt similarity >= {leakage['threshold']})"
        )
    if r.get("card_path"):
        out.print(f"dataset card: {r['card_path']}")
    if r.get("scores"):
        spread = ", ".join(f"{k}: {v}" for k, v in r["scores"].items())
        out.print(f"judge scores: {spread}")
    out.print(f"rejected: {rejected}")
    if r["rejected"] and r.get("job_id") is not None:
        out.print(f"each one, with its reason: distillery results {r['job_id']} --rejected")
    for warning in r.get("warnings", []):
        out.print(f"[yellow]warning:[/] {warning}")
    if r.get("unfinished_prompts"):
        out.print(f"[yellow]note:[/] {r['unfinished_prompts']} prompts are not finished yet")
