"""Fault tests (issue 5): real `distillery worker` processes, real Redis, SQLite and
PostgreSQL, the simulator over HTTP. Each test breaks one thing in the middle of a job (a
worker killed with SIGKILL, the broker's data wiped, a provider failing, database
connections killed) and then reads the ledger: every prompt has exactly one final answer,
nothing is counted twice, every call the simulator answered is accounted for, and the job's
counters equal its rows. docs/reliability.md describes the recovery path each one proves.

The helpers here are shared with tests/test_resume_cancel.py.
"""

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from models import (
    TERMINAL_PROMPT_STATUSES,
    Attempt,
    AttemptPurpose,
    AttemptStatus,
    Fallback,
    FallbackReason,
    Job,
    JobMode,
    JobStatus,
    PromptStatus,
    TrainingFile,
)
from simulator import ModelBehaviour, RunningSimulator, SimConfig, start_in_thread
from tests.conftest import (
    TEST_PG_ADMIN_URL,
    TEST_REDIS_URL,
    Workers,
    make_engine,
    wait_until,
    write_config,
)
from tests.pipeline import (
    attempts_of,
    prompts_of,
    submit_file,
    wait_for_job,
    wait_for_training_file,
    write_jsonl,
)

PROMPTS = 500
LATENCY_MS = 50
# Small on purpose, so a 500-prompt job lasts seconds and each worker holds several
# messages when the fault hits: calls in flight per worker (the tier's `concurrency`), and
# messages a worker holds at once (`distillery worker --concurrency`, the prefetch).
CALLS_PER_WORKER = 4
MESSAGES_PER_WORKER = 4
BATCH = 25  # prompt ids per message (`enqueue_batch`)
QUEUE = "frontier"
# kombu's Redis transport keeps each delivered, unacknowledged message in the hash UNACKED
# and its delivery time in the sorted set UNACKED_INDEX, until the worker acks it.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
RECEIVED = re.compile(r"Task distillery\.answer\[[0-9a-f-]+\] received")
SUCCEEDED = re.compile(r"Task distillery\.(answer|route)\[[0-9a-f-]+\] succeeded")
RETRIED = re.compile(r"Task distillery\.answer\[[0-9a-f-]+\] retry: .*OperationalError")
# An attempt is stamped right after its call returns, so "stamp - latency" is when the call
# went out, give or take the moments between the stamp and the clock reads around the call.
CLOCK_SLACK = timedelta(milliseconds=100)
# A prompt's finished_at is stamped before its transaction commits; until the commit, other
# workers rightly see it unfinished. A loaded machine can take this long to commit.
COMMIT_SLACK = timedelta(seconds=1)


# --- setup -------------------------------------------------------------------------------


@pytest.fixture
def slow_sim() -> Iterator[RunningSimulator]:
    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=LATENCY_MS))) as running:
        yield running


def fault_config(
    tmp_path: Path,
    sim: RunningSimulator,
    database_url: str,
    *,
    batch: int = BATCH,
    **tier: Any,
) -> Path:
    tier.setdefault("concurrency", CALLS_PER_WORKER)
    # The schema first, as a deployment runs `distillery db upgrade` before its workers:
    # workers started together would otherwise race to create the same tables.
    make_engine(database_url)
    return write_config(
        tmp_path / "distillery.toml",
        base_url=sim.base_url,
        database_url=database_url,
        enqueue_batch=batch,
        **tier,
    )


def prompt_rows(count: int) -> list[dict[str, Any]]:
    return [
        {"prompt": f"Explain idea {n} to a student.", "custom_id": f"p{n}"} for n in range(count)
    ]


def start_workers(workers: Workers, config: Path, count: int, tiers: str = QUEUE) -> None:
    first = len(workers.processes)
    for _ in range(count):
        workers.start(config, tiers=tiers, concurrency=MESSAGES_PER_WORKER)
    for index in range(first, first + count):
        wait_ready(workers, index)


def submit_prompts(
    tmp_path: Path, config: Path, count: int = PROMPTS, **options: Any
) -> tuple[int, Any]:
    path = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(count))
    job_id, engine, _ = submit_file(path, config, **options)
    return job_id, engine


def run_cli(config: Path, *args: str) -> str:
    """`distillery ARGS` in its own process, as an operator runs it; returns its output."""
    env = {**os.environ, "DISTILLERY_CONFIG": str(config), "REDIS_URL": TEST_REDIS_URL}
    env.pop("DATABASE_URL", None)  # the config names the database
    command = [sys.executable, "-m", "producer.cli", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def resume(config: Path, job_id: int) -> int:
    """Runs `distillery resume JOB`; returns how many prompts it re-enqueued."""
    out = run_cli(config, "resume", str(job_id))
    found = re.search(r"re-enqueued (\d+) prompts", out)
    assert found or "nothing left to do" in out, out
    return int(found.group(1)) if found else 0


# --- worker logs -------------------------------------------------------------------------


def log_of(workers: Workers, index: int) -> str:
    return (workers.logs / f"worker-{index}.log").read_text(errors="replace")


def wait_ready(workers: Workers, index: int) -> None:
    wait_until(
        lambda: " ready." in log_of(workers, index),
        timeout=120,
        what=f"worker {index} to be ready",
        logs=workers.log_text,
    )


def tasks_succeeded(workers: Workers) -> int:
    """answer and route tasks that ran to the end (and were acknowledged), all workers."""
    return len(SUCCEEDED.findall(workers.log_text()))


# --- the ledger --------------------------------------------------------------------------


def job_of(engine: Any, job_id: int) -> Job:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def done(engine: Any, job_id: int) -> int:
    return job_of(engine, job_id).done


def wait_for_done(engine: Any, job_id: int, at_least: int, workers: Workers) -> None:
    wait_until(
        lambda: done(engine, job_id) >= at_least,
        timeout=120,
        what=f"{at_least} prompts of job {job_id} to finish",
        logs=workers.log_text,
    )


def pending_ids(engine: Any, job_id: int) -> set[int]:
    prompts = prompts_of(engine, job_id)
    return {p.id or 0 for p in prompts if p.status not in TERMINAL_PROMPT_STATUSES}


def answer_calls(engine: Any, job_id: int) -> list[Attempt]:
    return [a for a in attempts_of(engine, job_id) if a.purpose == AttemptPurpose.ANSWER]


def fallbacks_of(engine: Any, job_id: int) -> list[Fallback]:
    with Session(engine) as session:
        return list(session.exec(select(Fallback).where(Fallback.job_id == job_id)))


def training_files(engine: Any, job_id: int) -> int:
    with Session(engine) as session:
        rows = session.exec(select(TrainingFile).where(TrainingFile.job_id == job_id))
        return len(list(rows))


def check_counters(engine: Any, job_id: int) -> Job:
    """The job's counters equal its rows: each terminal prompt counted once, under the
    status it ended with, and nothing counted that has not ended."""
    job = job_of(engine, job_id)
    prompts = prompts_of(engine, job_id)
    statuses = Counter(p.status for p in prompts)
    assert job.total == len(prompts)
    assert (job.completed, job.failed, job.cancelled) == (
        statuses[PromptStatus.SUCCEEDED],
        statuses[PromptStatus.FAILED],
        statuses[PromptStatus.CANCELLED],
    )
    assert job.fell_back == sum(p.fell_back for p in prompts)
    return job


def check_one_answer_each(engine: Any, job_id: int, total: int) -> list[Attempt]:
    """The job finished, every prompt succeeded with a response, and each has exactly one
    `ok` answer call: failed calls before it are its retries (recorded as such), and no
    prompt was answered twice. Returns the job's answer calls."""
    job = check_counters(engine, job_id)
    assert job.status == JobStatus.FINISHED
    assert (job.total, job.completed, job.failed, job.cancelled) == (total, total, 0, 0)
    prompts = prompts_of(engine, job_id)
    assert all(p.status == PromptStatus.SUCCEEDED and p.response for p in prompts)
    calls = answer_calls(engine, job_id)
    ok = Counter(a.prompt_id for a in calls if a.status == AttemptStatus.OK)
    assert ok == Counter({p.id: 1 for p in prompts})
    return calls


def call_started(attempt: Attempt) -> datetime:
    return attempt.started_at


def check_no_call_after_final_answer(engine: Any, job_id: int) -> None:
    """No model call for a prompt went out after the prompt's final status was committed
    (approximated by its finished_at stamp plus COMMIT_SLACK)."""
    finished = {p.id: p.finished_at for p in prompts_of(engine, job_id)}
    for call in answer_calls(engine, job_id):
        ended = finished[call.prompt_id]
        assert ended is not None
        assert call_started(call) <= ended + COMMIT_SLACK, (call, ended)


def sim_count(sim: RunningSimulator, status: str = "200", model: str = "sim-frontier") -> int:
    return int(sim.stats()["by_model"].get(model, {}).get(status, 0))


# --- the broker --------------------------------------------------------------------------


def message_prompt_ids(message: dict[str, Any]) -> list[int]:
    """The prompt ids a Celery message carries: its body is base64 JSON (args, kwargs,
    embed), and args[0] is the list of prompt ids for both answer and route tasks."""
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return [int(pid) for pid in args[0]]


def queued_ids(redis: Any, queue: str = QUEUE) -> list[int]:
    return [
        pid for raw in redis.lrange(queue, 0, -1) for pid in message_prompt_ids(json.loads(raw))
    ]


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
    config = fault_config(tmp_path, slow_sim, database_url)
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


def snapshot(engine: Any, job_id: int) -> tuple[Any, ...]:
    """Everything a redelivered message could change, in comparable form."""
    job = job_of(engine, job_id)
    prompts = [
        (p.id, p.status, p.response, p.final_tier, p.cost_usd, p.finished_at)
        for p in prompts_of(engine, job_id)
    ]
    attempts = sorted(a.id or 0 for a in attempts_of(engine, job_id))
    fallbacks = sorted(f.id or 0 for f in fallbacks_of(engine, job_id))
    counters = (job.status, job.completed, job.failed, job.cancelled, job.fell_back)
    return counters, prompts, attempts, fallbacks


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
    config = fault_config(tmp_path, slow_sim, database_url)
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
    from tests.test_route_pipeline import CASES, route_config, start_tier_workers

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
