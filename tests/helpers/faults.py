"""What the fault tests (tests/test_faults.py) and the resume, cancel and redelivery tests
(tests/test_resume_cancel.py) share: a fault job's size and config, its workers and their
logs, the ledger checks every fault ends with, and the prompt ids in the broker's messages."""

import base64
import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from models import (
    TERMINAL_PROMPT_STATUSES,
    Attempt,
    AttemptPurpose,
    AttemptStatus,
    Fallback,
    Job,
    JobStatus,
    PromptStatus,
    TrainingFile,
)
from simulator import RunningSimulator
from tests.helpers.config import write_config
from tests.helpers.pipeline import attempts_of, prompts_of, submit_file, write_jsonl
from tests.helpers.services import TEST_REDIS_URL, make_engine
from tests.helpers.workers import Workers, wait_until

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
SUCCEEDED = re.compile(r"Task distillery\.(answer|route)\[[0-9a-f-]+\] succeeded")
# An attempt is stamped right after its call returns, so "stamp - latency" is when the call
# went out, give or take the moments between the stamp and the clock reads around the call.
CLOCK_SLACK = timedelta(milliseconds=100)
# A prompt's finished_at is stamped before its transaction commits; until the commit, other
# workers rightly see it unfinished. A loaded machine can take this long to commit.
COMMIT_SLACK = timedelta(seconds=1)


# --- setup -------------------------------------------------------------------------------


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
