"""Fault tests (issue 5): real `distillery worker` processes, real Redis, SQLite and
PostgreSQL, the simulator over HTTP. Each test breaks one thing in the middle of a job (a
worker killed with SIGKILL, the broker's data wiped, a provider failing, database
connections killed) and then reads the ledger: every prompt has exactly one final answer,
nothing is counted twice, every call the simulator answered is accounted for, and the job's
counters equal its rows. docs/reliability.md describes the recovery path each one proves.

The helpers shared with tests/test_resume_cancel.py are in tests/helpers/faults.py.
"""

import json
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from models import AttemptStatus, FallbackReason, JobMode, JobStatus, PromptStatus
from simulator import ModelBehaviour, RunningSimulator, SimConfig, start_in_thread
from tests.helpers.faults import (
    CALLS_PER_WORKER,
    LATENCY_MS,
    PROMPTS,
    QUEUE,
    UNACKED,
    UNACKED_INDEX,
    answer_calls,
    check_counters,
    check_no_call_after_final_answer,
    check_one_answer_each,
    done,
    fallbacks_of,
    fault_config,
    job_of,
    log_of,
    message_prompt_ids,
    pending_ids,
    resume,
    sim_count,
    snapshot,
    start_workers,
    submit_prompts,
    tasks_succeeded,
    training_files,
    wait_for_done,
)
from tests.helpers.pipeline import (
    prompts_of,
    submit_file,
    wait_for_job,
    wait_for_training_file,
    write_jsonl,
)
from tests.helpers.routing import CASES, route_config, start_tier_workers
from tests.helpers.services import TEST_PG_ADMIN_URL, make_engine
from tests.helpers.workers import Workers, wait_until

# These tests prove the manual path (`distillery resume`), so the workers' own recovery
# (tests/test_recovery.py) is off: it would re-send the stranded prompts first.
MANUAL_RECOVERY = "[recovery]\nenabled = false\n"
RECEIVED = re.compile(r"Task distillery\.answer\[[0-9a-f-]+\] received")
RETRIED = re.compile(r"Task distillery\.answer\[[0-9a-f-]+\] retry: .*OperationalError")


# --- the broker --------------------------------------------------------------------------


def stranded_ids(redis: Any) -> list[int]:
    """Prompt ids of messages delivered to some worker and never acknowledged."""
    ids: list[int] = []
    for raw in redis.hvals(UNACKED):
        message, _exchange, _routing_key = json.loads(raw)
        ids += message_prompt_ids(message)
    return ids


def wait_until_stalled(
    engine: Any, job_id: int, redis: Any, workers: Workers, quiet_s: float = 3.0
) -> None:
    """Wait until the queue is empty and no prompt has ended for `quiet_s`: what is still
    pending then has no message that any running worker will take."""
    last = {"done": -1, "since": time.monotonic()}

    def stalled() -> bool:
        now = done(engine, job_id)
        if now != last["done"] or redis.llen(QUEUE):
            last.update(done=now, since=time.monotonic())
            return False
        return time.monotonic() - last["since"] >= quiet_s

    wait_until(stalled, timeout=120, what=f"job {job_id} to stall", logs=workers.log_text)


# --- part 1: delivery settings -----------------------------------------------------------


def test_delivery_settings(redis_client: Any) -> None:
    """Late acks, one message per slot, and the visibility timeout where kombu reads it."""
    from workers.app import VISIBILITY_TIMEOUT_S, app

    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    # Celery's Redis docs ask for the same value in all three places; kombu's transport is
    # the one that acts on it (a worker restores unacked messages older than this).
    assert conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    assert conf.result_backend_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    assert conf.visibility_timeout == VISIBILITY_TIMEOUT_S
    with app.connection_for_read() as connection:
        assert connection.default_channel.visibility_timeout == VISIBILITY_TIMEOUT_S
    # Longer than the longest call a worker can make with the default retry policy.
    from workers.settings import TierConfig

    tier = TierConfig.model_validate({"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    worst_call_s = (tier.max_retries + 1) * tier.timeout_s + tier.max_retries * tier.backoff_max_s
    assert 10 * worst_call_s < VISIBILITY_TIMEOUT_S


# --- SIGKILL -----------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_worker_mid_job_then_resume(
    tmp_path: Path,
    slow_sim: RunningSimulator,
    database_url: str,
    workers: Workers,
    clean_redis: Any,
) -> None:
    """kill -9 one of two workers mid-job. Nothing runs in a killed process, so its
    unacknowledged messages stay in Redis; a replacement worker does not take them back
    (kombu restores only messages older than the 6 h visibility timeout), and the job stalls
    with exactly those prompts pending. `distillery resume` finishes it, each prompt with
    one answer; the stranded messages, restored 6 h later, change nothing."""
    config = fault_config(tmp_path, slow_sim, database_url, extra=MANUAL_RECOVERY)
    start_workers(workers, config, 2)
    job_id, engine = submit_prompts(tmp_path, config)
    victim = workers.processes[0]
    wait_until(
        lambda: bool(RECEIVED.search(log_of(workers, 0))) and done(engine, job_id) >= 100,
        timeout=120,
        what="both workers to be busy",
        logs=workers.log_text,
    )
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert done(engine, job_id) < PROMPTS

    start_workers(workers, config, 1)  # a replacement, as a supervisor would start one
    wait_until_stalled(engine, job_id, clean_redis, workers)
    pending = pending_ids(engine, job_id)
    assert pending, "the killed worker had no prompt left to do"
    assert pending <= set(stranded_ids(clean_redis))
    assert job_of(engine, job_id).status == JobStatus.RUNNING

    assert resume(config, job_id) == len(pending)
    wait_for_job(engine, job_id, workers)
    check_one_answer_each(engine, job_id, PROMPTS)
    check_no_call_after_final_answer(engine, job_id)
    # Calls the simulator answered while the victim died were never recorded (the process
    # was gone before it could write them): at most one per call slot it had.
    assert 0 <= sim_count(slow_sim) - PROMPTS <= CALLS_PER_WORKER
    wait_for_training_file(engine, job_id, workers)

    check_late_restore_is_harmless(config, workers, engine, job_id, clean_redis, slow_sim)


def check_late_restore_is_harmless(
    config: Path,
    workers: Workers,
    engine: Any,
    job_id: int,
    redis: Any,
    sim: RunningSimulator,
) -> None:
    """Age the stranded messages past the visibility timeout, as 6 h would; a worker that
    starts then puts them back in the queue and takes them: no call, no row, no count."""
    stranded = redis.hlen(UNACKED)
    assert stranded > 0
    workers.stop()  # idle now; their own periodic sweep must not race the new worker
    redis.zadd(UNACKED_INDEX, {tag: 0 for tag in redis.zrange(UNACKED_INDEX, 0, -1)})
    before = (snapshot(engine, job_id), sim.stats()["requests"], tasks_succeeded(workers))

    start_workers(workers, config, 1)
    wait_until(
        lambda: tasks_succeeded(workers) == before[2] + stranded,
        timeout=60,
        what="the restored messages to be taken",
        logs=workers.log_text,
    )
    assert redis.hlen(UNACKED) == 0 and redis.llen(QUEUE) == 0
    assert (snapshot(engine, job_id), sim.stats()["requests"]) == before[:2]
    assert training_files(engine, job_id) == 1  # the reducer did not run again


# --- Redis loss --------------------------------------------------------------------------


@pytest.mark.slow
def test_redis_flushed_mid_job_then_resume(
    tmp_path: Path,
    slow_sim: RunningSimulator,
    database_url: str,
    workers: Workers,
    clean_redis: Any,
) -> None:
    """Every queued and unacknowledged message is lost mid-job. FLUSHDB on this test's own
    database is what FLUSHALL (or a Redis restarted without persistence) does to a
    dedicated Redis; other databases on the shared server are left alone. The SQL ledger
    still says what is left, so `resume` finishes the job, and prompts answered before the
    flush are not called again."""
    config = fault_config(tmp_path, slow_sim, database_url, extra=MANUAL_RECOVERY)
    start_workers(workers, config, 2)
    job_id, engine = submit_prompts(tmp_path, config)
    wait_for_done(engine, job_id, 100, workers)
    clean_redis.flushdb()

    wait_until_stalled(engine, job_id, clean_redis, workers)
    pending = pending_ids(engine, job_id)
    assert pending and job_of(engine, job_id).status == JobStatus.RUNNING
    calls_before = sim_count(slow_sim)
    assert calls_before == PROMPTS - len(pending)  # in-flight calls finished and were kept

    assert resume(config, job_id) == len(pending)
    wait_for_job(engine, job_id, workers)
    check_one_answer_each(engine, job_id, PROMPTS)  # so no prompt was called twice
    assert sim_count(slow_sim) - calls_before == len(pending)
    assert sim_count(slow_sim) == slow_sim.stats()["requests"] == PROMPTS
    wait_for_training_file(engine, job_id, workers)


# --- provider faults ---------------------------------------------------------------------

FAULTY_PROMPTS = 300
BURST = 12


@pytest.mark.slow
def test_provider_500s_and_429_bursts_teacher(
    tmp_path: Path, sqlite_url: str, workers: Workers
) -> None:
    """10 % of calls fail with 500 and three bursts of 429 (Retry-After: 1) hit mid-job:
    every prompt still succeeds, and every failure the simulator served is an attempt row
    with its HTTP status and error."""
    behaviour = ModelBehaviour(latency_ms=LATENCY_MS, error_rate=0.1)
    with start_in_thread(SimConfig(default=behaviour)) as sim:
        config = fault_config(tmp_path, sim, sqlite_url, max_retries=12)
        start_workers(workers, config, 2)
        job_id, engine = submit_prompts(tmp_path, config, count=FAULTY_PROMPTS)
        for at in (30, 100, 170):
            wait_for_done(engine, job_id, at, workers)
            sim.fail_next(BURST, status=429, retry_after=1)
        wait_for_job(engine, job_id, workers)
        served = sim.stats()["by_model"]["sim-frontier"]

    calls = check_one_answer_each(engine, job_id, FAULTY_PROMPTS)
    outcomes = Counter((a.status, a.http_status) for a in calls)
    assert outcomes == {
        (AttemptStatus.OK, 200): served["200"],
        (AttemptStatus.ERROR, 500): served["500"],
        (AttemptStatus.RATE_LIMITED, 429): served["429"],
    }
    assert served["500"] > 0 and served["429"] > 0
    for call in calls:
        if call.status != AttemptStatus.OK:
            assert call.error and f"HTTP {call.http_status}" in call.error


@pytest.mark.slow
def test_provider_faults_escalate_in_route_jobs(
    tmp_path: Path, sqlite_url: str, workers: Workers
) -> None:
    """The same faults on the small and medium tiers of a route job, with no retries: each
    failed call escalates its prompt (a fallback row with the failure as reason) to the
    frontier tier, which answers; nothing fails and nothing is lost."""
    tiers = {"sim-small": 0.3, "sim-medium": 0.6, "sim-frontier": 0.95}
    faulty = ("sim-small", "sim-medium")
    models = {
        name: ModelBehaviour(latency_ms=20, skill=skill, error_rate=0.1 if name in faulty else 0)
        for name, skill in tiers.items()
    }
    rows = [{"prompt": f"{text} (variant {i})"} for i in range(24) for text, _, _ in CASES]
    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=20), models=models)) as sim:
        make_engine(sqlite_url)  # before the workers, which would race to create it
        config = route_config(tmp_path, sim, sqlite_url, max_retries=0)
        start_tier_workers(workers, config)
        job_id, engine, _ = submit_file(
            write_jsonl(tmp_path / "q.jsonl", rows), config, mode=JobMode.ROUTE, router="rules"
        )
        for at in (10, 40):
            wait_for_done(engine, job_id, at, workers)
            sim.fail_next(4, status=429, retry_after=1, model="sim-small")
        job = wait_for_job(engine, job_id, workers)
        served = sim.stats()["by_model"]

    assert job.status == JobStatus.FINISHED
    check_counters(engine, job_id)
    assert (job.completed, job.failed) == (len(rows), 0)
    check_failures_escalated(engine, job_id, served)


def check_failures_escalated(engine: Any, job_id: int, served: dict[str, Any]) -> None:
    calls = answer_calls(engine, job_id)
    failed = [a for a in calls if a.status != AttemptStatus.OK]
    assert failed and all(a.tier != "frontier" for a in failed)
    for tier in ("small", "medium"):  # every failure the simulator served is a row
        mine = Counter(a.http_status for a in failed if a.tier == tier)
        model = served.get(f"sim-{tier}", {})
        assert mine == {code: model[str(code)] for code in (500, 429) if model.get(str(code))}
    escalations = Counter(
        (f.prompt_id, f.from_tier, f.reason)
        for f in fallbacks_of(engine, job_id)
        if f.reason != FallbackReason.LOW_CONFIDENCE
    )
    expected = Counter((a.prompt_id, a.tier, FallbackReason(a.status.value)) for a in failed)
    assert escalations == expected
    prompts = {p.id: p for p in prompts_of(engine, job_id)}
    for call in failed:
        prompt = prompts[call.prompt_id]
        assert prompt.status == PromptStatus.SUCCEEDED and prompt.final_tier == "frontier"
        assert prompt.fell_back


# --- database blips ----------------------------------------------------------------------


def terminate_backends(database_url: str) -> int:
    """Kill every server process of the test database but this one; how many died."""
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    query = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()"
    )
    with psycopg.connect(TEST_PG_ADMIN_URL, autocommit=True) as admin:
        return sum(1 for (killed,) in admin.execute(query, (name,)).fetchall() if killed)


def keep_killing_until_a_task_retries(
    engine: Any, job_id: int, database_url: str, workers: Workers
) -> None:
    """A killed idle connection is replaced by pre-ping unnoticed; to be sure the autoretry
    path runs too, kill again until a task has lost its connection mid-transaction."""
    while not RETRIED.search(workers.log_text()):
        if job_of(engine, job_id).status != JobStatus.RUNNING:
            return
        terminate_backends(database_url)
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_postgres_backends_killed_mid_job(
    tmp_path: Path, slow_sim: RunningSimulator, database_url: str, workers: Workers
) -> None:
    """Three times mid-job, every connection to the job's database is terminated, whatever
    it was doing (idle in the pool, reading, inside a commit). Workers reconnect (pool
    pre-ping) and a task that lost its connection retries (autoretry on OperationalError);
    a transaction killed mid-commit is all or nothing, so nothing is counted twice."""
    config = fault_config(tmp_path, slow_sim, database_url)
    start_workers(workers, config, 2)
    job_id, engine = submit_prompts(tmp_path, config)
    killed = []
    for at in (100, 200, 300):
        wait_for_done(engine, job_id, at, workers)
        killed.append(terminate_backends(database_url))
    keep_killing_until_a_task_retries(engine, job_id, database_url, workers)

    wait_for_job(engine, job_id, workers)
    assert all(killed), killed
    assert RETRIED.search(workers.log_text()), "no task lost its connection mid-transaction"
    check_one_answer_each(engine, job_id, PROMPTS)
    check_no_call_after_final_answer(engine, job_id)
    # A call whose result was being written when its connection died is made again.
    assert sim_count(slow_sim) >= PROMPTS
    wait_for_training_file(engine, job_id, workers)
