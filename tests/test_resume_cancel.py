"""Resume, cancel and redelivery (issue 5) with real worker processes, Redis and the
simulator: `cancel` stops the calls, `resume` re-enqueues exactly what is unfinished (and
nothing for a finished job), and a message delivered again never calls the model for a
prompt that has its final answer, never adds a row and never counts twice."""

import json
import math
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from models import JobMode, JobStatus
from models.types import utcnow
from simulator import RunningSimulator, SimConfig, start_in_thread
from tests.helpers.faults import (
    BATCH,
    CLOCK_SLACK,
    PROMPTS,
    QUEUE,
    UNACKED,
    answer_calls,
    call_started,
    check_counters,
    check_no_call_after_final_answer,
    check_one_answer_each,
    fault_config,
    job_of,
    message_prompt_ids,
    pending_ids,
    queued_ids,
    resume,
    run_cli,
    sim_count,
    snapshot,
    start_workers,
    submit_prompts,
    tasks_succeeded,
    training_files,
    wait_for_done,
    wait_ready,
)
from tests.helpers.pipeline import (
    prompts_of,
    submit_file,
    wait_for_job,
    wait_for_training_file,
    write_jsonl,
)
from tests.helpers.routing import CASES, route_config, start_tier_workers
from tests.helpers.services import make_engine
from tests.helpers.workers import Workers, wait_until
from workers.running_jobs import JOB_STATUS_TTL_S

# Calls already on the wire when `cancel` returns may still reach the simulator.
CANCEL_GRACE_S = 1.0
DRAIN_WATCH_S = 3.0


def drained(redis: Any, queues: tuple[str, ...] = (QUEUE,)) -> bool:
    """No message waiting and none delivered but unacknowledged."""
    return not any(redis.llen(q) for q in queues) and not redis.hlen(UNACKED)


def publish_again(prompt_ids: list[int], tier: str = QUEUE) -> int:
    """Publish answer messages for prompts, as a redelivery would: each id alone, each id
    again, then all of them in one message. Returns how many messages were sent."""
    from producer.submit import ANSWER_TASK, enqueue
    from workers.app import app

    for batch in (1, 1, len(prompt_ids)):
        enqueue(app, ANSWER_TASK, prompt_ids, queue=tier, batch=batch, extra_args=(tier,))
    return 2 * len(prompt_ids) + 1


# --- cancel ------------------------------------------------------------------------------


@pytest.mark.slow
def test_cancel_mid_job_stops_the_calls(
    tmp_path: Path,
    slow_sim: RunningSimulator,
    database_url: str,
    workers: Workers,
    clean_redis: Any,
) -> None:
    """After `distillery cancel` returns (and a grace for calls already on the wire), the
    workers go through the job's remaining messages without one more model call; the job
    ends `cancelled` with counts that add up, and the calls that were in flight are in
    the ledger."""
    config = fault_config(tmp_path, slow_sim, database_url)
    start_workers(workers, config, 2)
    job_id, engine = submit_prompts(tmp_path, config)
    wait_for_done(engine, job_id, 100, workers)

    out = run_cli(config, "cancel", str(job_id))
    acknowledged = utcnow()
    time.sleep(CANCEL_GRACE_S)
    calls = slow_sim.stats()["requests"]
    wait_until(
        lambda: drained(clean_redis), timeout=120, what="the queue to drain", logs=workers.log_text
    )
    time.sleep(DRAIN_WATCH_S)
    assert slow_sim.stats()["requests"] == calls

    job = check_counters(engine, job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.completed + job.failed + job.cancelled == job.total == PROMPTS
    assert job.completed > 0 and job.cancelled > 0
    assert f"cancelled {job.cancelled} unfinished prompts" in out
    # Every call the simulator answered is an attempt row (those that ended after the
    # cancel too, though their prompts stay cancelled), and none went out after it.
    attempts = answer_calls(engine, job_id)
    assert len(attempts) == sim_count(slow_sim) == slow_sim.stats()["requests"]
    # (cancel stamps its prompts before it commits, so their finished_at is no bound: a
    # worker rightly starts calls until the commit; `cancel` returning is the bound, plus
    # how stale a worker's view of the job's status may be.)
    bound = acknowledged + CLOCK_SLACK + timedelta(seconds=JOB_STATUS_TTL_S)
    assert all(call_started(a) <= bound for a in attempts)


# --- resume ------------------------------------------------------------------------------


def test_resume_of_a_finished_job_does_nothing(
    tmp_path: Path,
    slow_sim: RunningSimulator,
    sqlite_url: str,
    workers: Workers,
    clean_redis: Any,
) -> None:
    config = fault_config(tmp_path, slow_sim, sqlite_url)
    start_workers(workers, config, 1)
    job_id, engine = submit_prompts(tmp_path, config, count=20)
    wait_for_job(engine, job_id, workers)
    wait_for_training_file(engine, job_id, workers)
    before = (snapshot(engine, job_id), slow_sim.stats()["requests"])

    assert resume(config, job_id) == 0
    assert clean_redis.llen(QUEUE) == 0
    time.sleep(DRAIN_WATCH_S)
    assert (snapshot(engine, job_id), slow_sim.stats()["requests"]) == before


def test_resume_re_enqueues_exactly_the_unfinished_prompts(
    tmp_path: Path,
    slow_sim: RunningSimulator,
    sqlite_url: str,
    workers: Workers,
    clean_redis: Any,
) -> None:
    """Five of eight messages are lost before any worker runs; the three left are answered.
    `resume` then puts exactly the 25 prompts without an answer back in the queue, each
    once, and the job finishes with one call per prompt."""
    config = fault_config(tmp_path, slow_sim, sqlite_url, batch=5)
    job_id, engine = submit_prompts(tmp_path, config, count=40)
    messages = clean_redis.lrange(QUEUE, 0, -1)
    assert len(messages) == 8
    kept = messages[:3]
    clean_redis.delete(QUEUE)
    clean_redis.rpush(QUEUE, *kept)
    answered = {pid for raw in kept for pid in message_prompt_ids(json.loads(raw))}

    start_workers(workers, config, 1)
    wait_until(
        lambda: job_of(engine, job_id).done == len(answered) and drained(clean_redis),
        timeout=120,
        what="the kept messages to be answered",
        logs=workers.log_text,
    )
    workers.stop()  # so the re-enqueued messages stay in Redis to be inspected
    unfinished = pending_ids(engine, job_id)
    assert unfinished == {p.id for p in prompts_of(engine, job_id)} - answered
    assert len(unfinished) == 25

    assert resume(config, job_id) == 25
    queued = queued_ids(clean_redis)
    assert sorted(queued) == sorted(unfinished)  # each once, nothing else

    start_workers(workers, config, 1)
    wait_for_job(engine, job_id, workers)
    check_one_answer_each(engine, job_id, 40)
    assert slow_sim.stats()["requests"] == 40


# --- redelivery --------------------------------------------------------------------------


def test_redelivery_after_the_final_answer_changes_nothing(
    tmp_path: Path,
    slow_sim: RunningSimulator,
    sqlite_url: str,
    workers: Workers,
    clean_redis: Any,
) -> None:
    """Every prompt of a finished job published again (twice alone, once in a batch):
    the workers take every message, and no call, row, count or reducer run follows."""
    config = fault_config(tmp_path, slow_sim, sqlite_url)
    start_workers(workers, config, 2)
    job_id, engine = submit_prompts(tmp_path, config, count=30)
    wait_for_job(engine, job_id, workers)
    wait_for_training_file(engine, job_id, workers)
    before = (snapshot(engine, job_id), slow_sim.stats()["requests"])
    taken = tasks_succeeded(workers)

    sent = publish_again([p.id or 0 for p in prompts_of(engine, job_id)])
    wait_until(
        lambda: tasks_succeeded(workers) == taken + sent and drained(clean_redis),
        timeout=120,
        what="the redelivered messages to be taken",
        logs=workers.log_text,
    )
    assert (snapshot(engine, job_id), slow_sim.stats()["requests"]) == before
    assert training_files(engine, job_id) == 1


def test_duplicate_messages_mid_job_never_count_twice(
    tmp_path: Path,
    slow_sim: RunningSimulator,
    sqlite_url: str,
    workers: Workers,
    clean_redis: Any,
) -> None:
    """Every prompt published three more times while its job runs, so duplicates meet the
    original in flight on two workers. Each prompt is counted once and keeps one answer;
    a duplicate calls the model only while the prompt has no final answer yet (two
    deliveries overlapping), and such a call is an attempt row, never a count."""
    config = fault_config(tmp_path, slow_sim, sqlite_url)
    start_workers(workers, config, 2)
    job_id, engine = submit_prompts(tmp_path, config, count=60)
    sent = publish_again([p.id or 0 for p in prompts_of(engine, job_id)])
    job = wait_for_job(engine, job_id, workers)
    wait_until(
        lambda: tasks_succeeded(workers) == math.ceil(60 / BATCH) + sent and drained(clean_redis),
        timeout=120,
        what="every message to be taken",
        logs=workers.log_text,
    )

    assert job.status == JobStatus.FINISHED
    check_counters(engine, job_id)
    assert (job_of(engine, job_id).completed, job_of(engine, job_id).failed) == (60, 0)
    calls = answer_calls(engine, job_id)
    assert len(calls) == sim_count(slow_sim) == slow_sim.stats()["requests"]
    assert {a.prompt_id for a in calls} == {p.id for p in prompts_of(engine, job_id)}
    check_no_call_after_final_answer(engine, job_id)
    assert training_files(engine, job_id) == 1


def test_redelivered_route_messages_change_nothing(
    tmp_path: Path, sqlite_url: str, workers: Workers, clean_redis: Any
) -> None:
    """A finished route job's prompts published again to the router and to every tier
    (including the tier a prompt escalated from): nothing is called, written or counted."""
    from producer.submit import ROUTE_TASK, enqueue
    from workers.app import CONTROL_QUEUE, app

    rows = [{"prompt": f"{text} (variant {i})"} for i in range(4) for text, _, _ in CASES]
    with start_in_thread(SimConfig.tiered(latency_ms=5)) as sim:
        make_engine(sqlite_url)  # before the workers, which would race to create it
        config = route_config(tmp_path, sim, sqlite_url)
        start_tier_workers(workers, config)
        for index in range(3):
            wait_ready(workers, index)
        job_id, engine, _ = submit_file(
            write_jsonl(tmp_path / "q.jsonl", rows), config, mode=JobMode.ROUTE, router="rules"
        )
        assert wait_for_job(engine, job_id, workers).completed == len(rows)
        assert job_of(engine, job_id).fell_back > 0
        before = (snapshot(engine, job_id), sim.stats()["requests"])
        taken = tasks_succeeded(workers)

        ids = [p.id or 0 for p in prompts_of(engine, job_id)]
        enqueue(app, ROUTE_TASK, ids, queue=CONTROL_QUEUE, batch=1)
        sent = len(ids) + sum(publish_again(ids, tier) for tier in ("small", "medium", "frontier"))
        queues = ("small", "medium", "frontier", CONTROL_QUEUE)
        wait_until(
            lambda: tasks_succeeded(workers) == taken + sent and drained(clean_redis, queues),
            timeout=120,
            what="the redelivered messages to be taken",
            logs=workers.log_text,
        )
        assert (snapshot(engine, job_id), sim.stats()["requests"]) == before


def test_resume_prints_what_it_did(
    tmp_path: Path,
    slow_sim: RunningSimulator,
    sqlite_url: str,
    clean_redis: Any,
) -> None:
    """Without workers: resume re-enqueues every prompt of a fresh job, then a cancel
    leaves nothing for a second resume to do."""
    config = fault_config(tmp_path, slow_sim, sqlite_url)
    job_id, engine = submit_prompts(tmp_path, config, count=30)
    clean_redis.delete(QUEUE)
    assert resume(config, job_id) == 30
    out = run_cli(config, "cancel", str(job_id))
    assert re.search(r"cancelled 30 unfinished prompts", out)
    assert resume(config, job_id) == 0
    assert job_of(engine, job_id).status == JobStatus.CANCELLED
