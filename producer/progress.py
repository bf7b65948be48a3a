"""Waiting for a job with a progress bar (or silently, for --json)."""

import time
from collections.abc import Callable

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
from sqlmodel import Session, col

from models import Job, JobStatus, TrainingFile
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


def detail(job: Job) -> str:
    parts = [f"[green]{job.completed} ok[/]"]
    if job.failed:
        parts.append(f"[red]{job.failed} failed[/]")
    if job.fell_back:
        parts.append(f"[yellow]{job.fell_back} fell back[/]")
    if job.cancelled:
        parts.append(f"{job.cancelled} cancelled")
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
            bar.update(task, completed=job.done, detail=detail(job))
            if until(job):
                return job
            time.sleep(interval)
            job = snapshot(engine, job_id)


def wait_for_training_file(engine: Engine, job_id: int, timeout: float = 120.0) -> bool:
    """After a teacher job finishes, the reducer runs on a worker; wait for its row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(engine) as session:
            if session.query(TrainingFile).filter(col(TrainingFile.job_id) == job_id).first():
                return True
        time.sleep(0.3)
    return False
