"""Helpers to run a real teacher job: a file, real workers, the ledger, the reducer."""

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from models import Attempt, Job, JobMode, JobStatus, Prompt, TrainingFile
from tests.helpers.services import make_engine
from tests.helpers.workers import Workers, wait_until


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def submit_file(
    path: Path, config: Path, mode: JobMode = JobMode.TEACHER, **options: Any
) -> tuple[int, Any, Any]:
    """Submit through the producer API with the worker's own config."""
    from producer.submit import submit_job
    from workers.app import app
    from workers.settings import load_settings

    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    submitted = submit_job(path, mode=mode, settings=settings, engine=engine, app=app, **options)
    return submitted.job_id, engine, settings


def wait_for_job(engine: Any, job_id: int, workers: Workers, *, timeout: float = 300) -> Job:
    def finished() -> bool:
        with Session(engine) as session:
            job = session.get(Job, job_id)
            return job is not None and job.status != JobStatus.RUNNING

    wait_until(finished, timeout=timeout, what=f"job {job_id} to finish", logs=workers.log_text)
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def wait_for_training_file(engine: Any, job_id: int, workers: Workers) -> TrainingFile:
    def exists() -> bool:
        with Session(engine) as session:
            return (
                session.exec(select(TrainingFile).where(TrainingFile.job_id == job_id)).first()
                is not None
            )

    wait_until(exists, timeout=120, what="the reducer's training file", logs=workers.log_text)
    with Session(engine) as session:
        return session.exec(select(TrainingFile).where(TrainingFile.job_id == job_id)).one()


def prompts_of(engine: Any, job_id: int) -> list[Prompt]:
    with Session(engine) as session:
        return list(
            session.exec(select(Prompt).where(Prompt.job_id == job_id).order_by(Prompt.idx))
        )


def attempts_of(engine: Any, job_id: int) -> list[Attempt]:
    with Session(engine) as session:
        query = select(Attempt).join(Prompt).where(Prompt.job_id == job_id)
        return list(session.exec(query))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
