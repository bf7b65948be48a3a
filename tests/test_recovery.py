"""Automatic recovery (issue 14 part 1): real `distillery worker` processes, a fault mid-job,
and no `distillery resume` — the workers' leases and sweeper (workers/leases.py,
workers/sweeper.py) bring back what was lost. Each test ends with every prompt answered
exactly once (one `ok` answer call each), the counters equal to the rows, and the reducer
run once. docs/reliability.md → Recovery without a human describes the design and the
times measured here (printed with `pytest -s`)."""

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from models import JobMode, JobStatus
from simulator import RunningSimulator
from tests.helpers.config import write_config
from tests.helpers.faults import (
    CALLS_PER_WORKER,
    PROMPTS,
    check_counters,
    check_no_call_after_final_answer,
    check_one_answer_each,
    done,
    fault_config,
    log_of,
    sim_count,
    start_workers,
    submit_prompts,
    training_files,
    wait_for_done,
)
from tests.helpers.pipeline import submit_file, wait_for_job, wait_for_training_file, write_jsonl
from tests.helpers.recovery import (
    FAST_RECOVERY,
    RESENT,
    cli_submit,
    private_postgres,
    private_redis,
    rabbitmq_vhost,
)
from tests.helpers.routing import CASES
from tests.helpers.services import make_engine
from tests.helpers.workers import Workers, wait_until

# A job's reducer runs once: after its file appears, a few more sweeps send nothing.
SWEEPS_AFTER = 4.0


def finish_without_resume(
    engine: Any, job_id: int, workers: Workers, fault_at: float, what: str
) -> None:
    """Wait for the job to end on its own; check one answer per prompt and one reducer."""
    wait_for_job(engine, job_id, workers)
    ended = time.monotonic()
    check_one_answer_each(engine, job_id, PROMPTS)
    check_no_call_after_final_answer(engine, job_id)
    wait_for_training_file(engine, job_id, workers)
    time.sleep(SWEEPS_AFTER)
    assert training_files(engine, job_id) == 1
    print(f"\n{what}: job finished {ended - fault_at:.1f} s after the fault")


def kill_one_of_two_mid_job(engine: Any, job_id: int, workers: Workers) -> float:
    victim = workers.processes[0]
    wait_until(
        lambda: "received" in log_of(workers, 0) and done(engine, job_id) >= 100,
        timeout=120,
        what="both workers to be busy",
        logs=workers.log_text,
    )
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert done(engine, job_id) < PROMPTS
    return killed_at


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_job_heals_itself(
    tmp_path: Path, slow_sim: RunningSimulator, database_url: str, workers: Workers
) -> None:
    """kill -9 one of two workers mid-job and start nothing: the survivor's sweeper finds
    the dead worker's messages unheld once its lease expires and re-sends their prompts."""
    config = fault_config(tmp_path, slow_sim, database_url, extra=FAST_RECOVERY)
    start_workers(workers, config, 2)
    job_id, engine = submit_prompts(tmp_path, config)
    killed_at = kill_one_of_two_mid_job(engine, job_id, workers)

    finish_without_resume(engine, job_id, workers, killed_at, "SIGKILL (redis broker)")
    assert RESENT in log_of(workers, 1)
    # Calls the victim had on the wire were paid for and never recorded, so they are made
    # again: at most one per call slot it had.
    assert 0 <= sim_count(slow_sim) - PROMPTS <= CALLS_PER_WORKER


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_job_with_rabbitmq(
    tmp_path: Path, slow_sim: RunningSimulator, sqlite_url: str, workers: Workers
) -> None:
    """The same kill with RabbitMQ as the broker (Redis keeps the limits and leases):
    RabbitMQ redelivers the dead consumer's messages at once, and the sweeper, which knows
    it does, re-sends nothing of them."""
    with rabbitmq_vhost() as broker:
        env = {"BROKER_URL": broker}
        config = fault_config(tmp_path, slow_sim, sqlite_url, extra=FAST_RECOVERY)
        for _ in range(2):
            workers.start(config, tiers="frontier", concurrency=4, **env)
        for index in range(2):
            wait_until(
                lambda i=index: " ready." in log_of(workers, i),  # type: ignore[misc]
                timeout=120,
                what="the workers to be ready",
                logs=workers.log_text,
            )
        assert "amqp://" in log_of(workers, 0)
        job_id = cli_submit(config, tmp_path, PROMPTS, env)
        engine = make_engine(sqlite_url)
        killed_at = kill_one_of_two_mid_job(engine, job_id, workers)

        finish_without_resume(engine, job_id, workers, killed_at, "SIGKILL (rabbitmq broker)")
        workers.stop()
    assert RESENT not in log_of(workers, 1)
    assert 0 <= sim_count(slow_sim) - PROMPTS <= CALLS_PER_WORKER


@pytest.mark.slow
def test_redis_flushall_mid_job_heals_itself(
    tmp_path: Path, slow_sim: RunningSimulator, sqlite_url: str, workers: Workers
) -> None:
    """FLUSHALL of the broker's Redis (a private server: never the shared one) mid-job:
    every queued message and every lease is gone. Live workers rewrite their leases at the
    next heartbeat, so what they hold is not re-sent; what was queued is re-sent once. No
    prompt is called twice."""
    import redis

    with private_redis() as url:
        env = {"REDIS_URL": url}
        config = fault_config(tmp_path, slow_sim, sqlite_url, extra=FAST_RECOVERY)
        for _ in range(2):
            workers.start(config, tiers="frontier", concurrency=4, **env)
        for index in range(2):
            wait_until(
                lambda i=index: " ready." in log_of(workers, i),  # type: ignore[misc]
                timeout=120,
                what="the workers to be ready",
                logs=workers.log_text,
            )
        job_id = cli_submit(config, tmp_path, PROMPTS, env)
        engine = make_engine(sqlite_url)
        wait_for_done(engine, job_id, 100, workers)
        redis.Redis.from_url(url).flushall()
        flushed_at = time.monotonic()
        assert done(engine, job_id) < PROMPTS

        finish_without_resume(engine, job_id, workers, flushed_at, "FLUSHALL")
        workers.stop()
    assert RESENT in workers.log_text()
    assert sim_count(slow_sim) == slow_sim.stats()["requests"] == PROMPTS


@pytest.mark.slow
def test_postgres_restart_mid_job_heals_itself(
    tmp_path: Path, slow_sim: RunningSimulator, workers: Workers
) -> None:
    """The job's PostgreSQL (a private cluster) stops mid-job and starts again 3 s later:
    tasks that lost the database retry, the sweeper skips its looks while it is away, and
    the job ends with one answer per prompt."""
    with private_postgres() as server:
        config = fault_config(tmp_path, slow_sim, server.url, extra=FAST_RECOVERY)
        start_workers(workers, config, 2)
        job_id, engine = submit_prompts(tmp_path, config)
        wait_for_done(engine, job_id, 100, workers)
        server.stop()
        stopped_at = time.monotonic()
        time.sleep(3)
        server.start()
        assert done(engine, job_id) < PROMPTS

        finish_without_resume(engine, job_id, workers, stopped_at, "PostgreSQL restart")
        workers.stop()
        engine.dispose()
    assert sim_count(slow_sim) >= PROMPTS


# --- a lost follow-up (the reducer's: tests/test_teacher_pipeline.py) --------------------


def lose_queued_messages(redis: Any, queue: str) -> int:
    """Delete a queue's messages and their queued tickets, as a crash between a commit and
    its send (or a lost message) leaves them: only the ledger knows."""
    from workers.leases import QUEUED

    lost = int(redis.llen(queue))
    redis.delete(queue, QUEUED)
    return lost


def test_a_lost_route_step_is_sent_again(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, workers: Workers
) -> None:
    """A route job whose route messages were lost before any worker took them: the
    sweeper sends its prompts to the router again, and every prompt ends."""
    make_engine(sqlite_url)
    router = '[router]\nstrategy = "rules"\nfallback = ["frontier"]\nconfidence_threshold = 0.8\n'
    config = write_config(
        tmp_path / "distillery.toml",
        base_url=tiered_sim.base_url,
        database_url=sqlite_url,
        extra=router + FAST_RECOVERY,
    )
    rows = [{"prompt": f"{text} (variant {i})"} for i in range(4) for text, _, _ in CASES]
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    job_id, engine, _ = submit_file(path, config, mode=JobMode.ROUTE, router="rules")
    assert lose_queued_messages(workers_redis(), "control") > 0

    workers.start(config, tiers=None, concurrency=4)
    job = wait_for_job(engine, job_id, workers)
    assert job.status == JobStatus.FINISHED
    job = check_counters(engine, job_id)
    assert (job.completed, job.failed) == (len(rows), 0)
    assert RESENT in workers.log_text()


def workers_redis() -> Any:
    import redis

    from tests.helpers.services import TEST_REDIS_URL

    return redis.Redis.from_url(TEST_REDIS_URL)
