"""A worker process builds what its tasks share (call loop, caller, ledger writer) once, when
it starts, and closes it when it stops: a warm shutdown flushes the ledger and closes every
connection, so nothing is left unclosed and nothing answered is left unrecorded."""

import signal
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from models import Attempt, JobStatus, Prompt
from simulator import RunningSimulator
from tests.helpers.config import write_config
from tests.helpers.pipeline import submit_file, wait_for_job, write_jsonl
from tests.helpers.workers import Workers, wait_until

READY = " ready."  # Celery's line, once the context (built at worker_init) and consumer are up
CLOSED = "worker context closed"


def test_the_context_is_built_at_start_and_closed_at_shutdown(
    tmp_path: Path, sim: RunningSimulator, workers: Workers, sqlite_url: str
) -> None:
    config = write_config(
        tmp_path / "distillery.toml", base_url=sim.base_url, database_url=sqlite_url
    )
    process = workers.start(config)
    wait_until(lambda: READY in workers.log_text(), timeout=120, what="the worker to start")
    rows = [{"prompt": f"Name a use of the number {n}."} for n in range(30)]
    job_id, engine, _ = submit_file(write_jsonl(tmp_path / "p.jsonl", rows), config)
    job = wait_for_job(engine, job_id, workers)
    assert job.status == JobStatus.FINISHED and job.completed == 30

    process.send_signal(signal.SIGTERM)  # a warm shutdown
    assert process.wait(timeout=60) == 0
    log = workers.log_text()
    assert log.count(CLOSED) == 1 and log.index(CLOSED) > log.index(READY)
    assert "Unclosed" not in log and "Traceback" not in log
    with Session(engine) as session:
        answered = session.exec(select(Prompt).where(Prompt.job_id == job_id)).all()
        calls: list[Any] = list(session.exec(select(Attempt)).all())
    assert all(p.response for p in answered) and len(answered) == 30
    assert len(calls) >= 30  # every answer's call is on record
