"""Horizontal scaling of one tier: three `distillery worker --tiers frontier` processes share a
teacher job; a fourth joins mid-job and one leaves with a warm shutdown (SIGTERM), as
`docker compose up --scale worker-frontier=N` and `docker compose stop` do. The job still
finishes with exactly one answer per prompt and counters equal to the rows."""

import re
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from models import AttemptStatus, Job, JobStatus, PromptStatus
from simulator import ModelBehaviour, RunningSimulator, SimConfig, start_in_thread
from tests.helpers.config import write_config
from tests.helpers.pipeline import attempts_of, prompts_of, submit_file, wait_for_job, write_jsonl
from tests.helpers.workers import Workers, wait_until

PROMPTS = 300
FAST_MS = 50
# While a worker joins or leaves, calls slow down so the job cannot finish before the change
# happens, however slow this machine starts a Python process: the test waits on events, and
# this only keeps enough work in the queue meanwhile (6 slots at 1 s = 6 prompts a second).
SLOW_MS = 1000
CONCURRENCY = 2
RECEIVED = re.compile(r"Task distillery\.answer\[[0-9a-f-]+\] received")


def log_of(workers: Workers, index: int) -> str:
    return (workers.logs / f"worker-{index}.log").read_text(errors="replace")


def received(workers: Workers, index: int) -> int:
    return len(RECEIVED.findall(log_of(workers, index)))


def done(engine: Any, job_id: int) -> int:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.done


def wait_ready(workers: Workers, index: int) -> None:
    wait_until(
        lambda: " ready." in log_of(workers, index),
        timeout=120,
        what=f"worker {index} to be ready",
        logs=workers.log_text,
    )


@pytest.mark.slow
def test_workers_join_and_leave_mid_job(
    tmp_path: Path, database_url: str, workers: Workers
) -> None:
    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=FAST_MS))) as sim:
        config = write_config(
            tmp_path / "distillery.toml",
            base_url=sim.base_url,
            database_url=database_url,
            enqueue_batch=1,  # one prompt per message, so joining workers find work
        )
        for _ in range(3):
            workers.start(config, tiers="frontier", concurrency=CONCURRENCY)
        for index in range(3):
            wait_ready(workers, index)
        rows = [
            {"prompt": f"Explain idea {n} to a student.", "custom_id": f"p{n}"}
            for n in range(PROMPTS)
        ]
        job_id, engine, _ = submit_file(write_jsonl(tmp_path / "prompts.jsonl", rows), config)
        wait_until(
            lambda: done(engine, job_id) >= 20,
            timeout=120,
            what="the job to start",
            logs=workers.log_text,
        )

        joined_at, left_at = scale_mid_job(sim, workers, config, engine, job_id)
        job = wait_for_job(engine, job_id, workers)
        stats = sim.stats()

    assert 0 < joined_at < PROMPTS and 0 < left_at < PROMPTS, (joined_at, left_at)
    check_one_answer_per_prompt(engine, job_id, job)
    # Each prompt was called once, whichever worker called it.
    assert stats["by_model"]["sim-frontier"]["requests"] == PROMPTS
    check_work_was_shared(workers)


def scale_mid_job(
    sim: RunningSimulator, workers: Workers, config: Path, engine: Any, job_id: int
) -> tuple[int, int]:
    """Add a fourth worker, then stop the first; returns how many prompts were done at each."""
    sim.configure(None, latency_ms=SLOW_MS)
    joined_at = done(engine, job_id)
    workers.start(config, tiers="frontier", concurrency=CONCURRENCY)
    wait_until(
        lambda: received(workers, 3) > 0,
        timeout=120,
        what="the new worker to take work",
        logs=workers.log_text,
    )
    left_at = done(engine, job_id)
    leaving = workers.processes[0]
    leaving.send_signal(signal.SIGTERM)  # Celery's warm shutdown: running calls finish
    try:
        assert leaving.wait(timeout=60) == 0, log_of(workers, 0)[-3000:]
    except subprocess.TimeoutExpired:
        raise AssertionError("the stopped worker did not exit within 60 s") from None
    assert "Warm shutdown" in log_of(workers, 0)
    sim.configure(None, latency_ms=FAST_MS)
    return joined_at, left_at


def check_one_answer_per_prompt(engine: Any, job_id: int, job: Job) -> None:
    assert job.status == JobStatus.FINISHED
    assert (job.total, job.completed, job.failed, job.cancelled) == (PROMPTS, PROMPTS, 0, 0)
    prompts = prompts_of(engine, job_id)
    statuses = Counter(p.status for p in prompts)
    assert statuses == {PromptStatus.SUCCEEDED: PROMPTS}
    assert job.completed == statuses[PromptStatus.SUCCEEDED]
    assert all(p.response and p.final_tier == "frontier" for p in prompts)
    attempts = attempts_of(engine, job_id)
    assert Counter(a.prompt_id for a in attempts) == {p.id: 1 for p in prompts}
    assert all(a.status == AttemptStatus.OK for a in attempts)


def check_work_was_shared(workers: Workers) -> None:
    counts = [received(workers, index) for index in range(4)]
    # Every worker took part, the late one and the one that left included; a message the
    # leaving worker had reserved but not started goes back to the queue, so the total may
    # exceed the number of prompts, never fall short of it.
    assert all(count > 0 for count in counts), counts
    assert sum(counts) >= PROMPTS, counts
