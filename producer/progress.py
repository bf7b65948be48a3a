"""Waiting for a job with a progress bar (or silently, for --json)."""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import Job, JobMode, JobStatus
from models.queries import has_training_file
from models.reports import final_tier_counts
from producer.report import SAVINGS_FALLBACK_TARGET
from producer.status import get_job


def snapshot(engine: Engine, job_id: int) -> Job:
    with Session(engine, expire_on_commit=False) as session:
        return get_job(session, job_id)


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]job {task.fields[job_id]}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def final_tiers(engine: Engine, job_id: int) -> dict[str, int]:
    """Live distribution of a route job's finished prompts over their final tiers."""
    with Session(engine) as session:
        return final_tier_counts(session=session, job_id=job_id, terminal_only=False)


def detail(job: Job, tiers: dict[str, int] | None = None) -> str:
    parts = [f"[green]{job.completed} ok[/]"]
    if job.failed:
        parts.append(f"[red]{job.failed} failed[/]")
    if job.cancelled:
        parts.append(f"{job.cancelled} cancelled")
    if tiers:
        parts.append("| " + " ".join(f"{tier} {n}" for tier, n in sorted(tiers.items())))
    if job.mode == JobMode.ROUTE and job.done:
        rate = job.fell_back / job.done
        colour = "red" if rate > SAVINGS_FALLBACK_TARGET else "yellow"
        parts.append(f"| [{colour}]fell back {rate:.1%}[/]")
    return " ".join(parts)


def wait_for_job(
    engine: Engine,
    job_id: int,
    *,
    console: Console | None,
    interval: float = 0.5,
    until: Callable[[Job], bool] = lambda job: job.status != JobStatus.RUNNING,
) -> Job:
    """Poll the ledger until the job ends; draw a bar when a console is given."""
    job = snapshot(engine, job_id)
    if console is None:
        while not until(job):
            time.sleep(interval)
            job = snapshot(engine, job_id)
        return job
    with progress_bar(console) as bar:
        task = bar.add_task("", total=job.total, job_id=job_id, detail=detail(job))
        while True:
            tiers = final_tiers(engine, job_id) if job.mode == JobMode.ROUTE else None
            bar.update(task, completed=job.done, detail=detail(job, tiers))
            if until(job):
                return job
            time.sleep(interval)
            job = snapshot(engine, job_id)


def wait_for_training_file(engine: Engine, job_id: int, timeout: float = 120.0) -> bool:
    """After a teacher job finishes, the reducer runs on a worker; wait for its row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(engine) as session:
            if has_training_file(session=session, job_id=job_id):
                return True
        time.sleep(0.3)
    return False


class TrainingBar:
    """A training run's progress: step M/N, the latest loss, elapsed time and ETA. Fed by
    the run itself (`step`, in process) or by readings of its row (`row`, a worker's)."""

    def __init__(self, progress: Progress | None, task: Any) -> None:
        self.progress = progress
        self.task = task

    def step(self, log: Any) -> None:
        self._show(log.step, log.steps_total, log.train_loss, log.validation_loss)

    def row(self, row: Any) -> None:
        last = row.loss_curve[-1] if row.loss_curve else {}
        self._show(row.steps_done, row.steps_total or None, last.get("train_loss"), None)

    def _show(self, done: int, total: int | None, loss: float | None, valid: float | None) -> None:
        if self.progress is None:
            return
        text = "" if loss is None else f"loss {loss:.4f}"
        text += "" if valid is None else f" (validation {valid:.4f})"
        self.progress.update(self.task, completed=done, total=total, loss=text)


@contextmanager
def training_bar(console: Console, fine_tune_id: int, *, quiet: bool) -> Iterator[TrainingBar]:
    if quiet:
        yield TrainingBar(None, None)
        return
    progress = Progress(
        TextColumn(f"[bold]fine-tune {fine_tune_id}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        yield TrainingBar(progress, progress.add_task("train", total=None, loss=""))
