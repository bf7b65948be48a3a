"""A worker process builds what its tasks share (call loop, caller, ledger writer) once, when
it starts, and closes it when it stops: a warm shutdown flushes the ledger and closes every
connection, so nothing is left unclosed and nothing answered is left unrecorded."""

import re
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
    frozen = re.search(r"garbage collector set for serving: (\d+) start-up objects frozen", log)
    assert frozen and int(frozen[1]) > 10_000  # workers/heap.py: modules, app, context
    with Session(engine) as session:
        answered = session.exec(select(Prompt).where(Prompt.job_id == job_id)).all()
        calls: list[Any] = list(session.exec(select(Attempt)).all())
    assert all(p.response for p in answered) and len(answered) == 30
    assert len(calls) >= 30  # every answer's call is on record


CREATE = (
    "import sys; from models import create_tables, get_engine; "
    "create_tables(get_engine(sys.argv[1])); print('created')"
)


def test_processes_starting_together_create_the_tables_once(database_url: str) -> None:
    """Six processes on a fresh database at the same instant: all succeed (the DDL is
    serialised by a lock), and the tables are there once."""
    import subprocess
    import sys

    from sqlalchemy import inspect

    from tests.helpers.services import make_engine

    starts = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(6)
    ]
    outputs = [process.communicate(timeout=120)[0].decode() for process in starts]
    assert [process.returncode for process in starts] == [0] * 6, outputs
    tables = set(inspect(make_engine(database_url)).get_table_names())
    assert {"jobs", "prompts", "attempts", "fallbacks", "training_files"} <= tables


def test_four_workers_starting_together_on_a_fresh_database_all_start(
    tmp_path: Path, sim: RunningSimulator, workers: Workers
) -> None:
    database = f"sqlite:///{tmp_path / 'fresh.db'}"
    config = write_config(
        tmp_path / "distillery.toml", base_url=sim.base_url, database_url=database
    )
    processes = [workers.start(config, tiers=None) for _ in range(4)]
    wait_until(
        lambda: (
            workers.log_text().count(READY) == 4 or any(p.poll() is not None for p in processes)
        ),
        timeout=180,
        what="four workers to start",
        logs=workers.log_text,
    )
    assert [p.poll() for p in processes] == [None] * 4, workers.log_text()[-3000:]
    rows = [{"prompt": f"Say {n}."} for n in range(20)]
    job_id, engine, _ = submit_file(write_jsonl(tmp_path / "p.jsonl", rows), config)
    assert wait_for_job(engine, job_id, workers).completed == 20
