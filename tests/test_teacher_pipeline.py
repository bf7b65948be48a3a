"""End to end: submit → Redis → real worker processes → SQL → reducer → fine-tuning JSONL."""

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from models import AttemptStatus, JobStatus, PromptStatus
from tests.helpers.config import write_config
from tests.helpers.pipeline import (
    attempts_of,
    prompts_of,
    read_jsonl,
    submit_file,
    wait_for_job,
    wait_for_training_file,
    write_jsonl,
)
from tests.helpers.services import shared_data
from tests.helpers.workers import wait_until

TOPICS = [
    "photosynthesis",
    "the French revolution",
    "binary search",
    "compound interest",
    "volcanoes",
    "the immune system",
    "supply and demand",
    "black holes",
    "sourdough bread",
    "plate tectonics",
]


def teacher_rows() -> tuple[list[dict[str, Any]], dict[str, int], set[int]]:
    """200 prompts whose fate in the reducer is known from the input alone."""
    rows: list[dict[str, Any]] = []
    kept: set[int] = set()
    for i in range(155):
        kept.add(len(rows))
        rows.append(
            {"prompt": f"Explain {TOPICS[i % 10]} to a student, angle {i}.", "custom_id": f"n{i}"}
        )
    for i in range(10):  # the same prompt again: the same answer, an exact duplicate
        rows.append({"prompt": f"Explain {TOPICS[i % 10]} to a student, angle {i}."})
    for i in range(15):
        rows.append({"prompt": f"[refuse] Tell me something forbidden #{i}"})
    for i in range(15):
        rows.append({"prompt": f"[short] Say OK #{i}"})
    for i in range(5):
        rows.append({"prompt": f"[long] Write an essay on topic {i}"})
    expected = {"duplicate": 10, "refusal": 15, "too_short": 15, "too_long": 5}
    return rows, expected, kept


def test_teacher_job_end_to_end(tmp_path: Path, sim: Any, database_url: str, workers: Any) -> None:
    rows, expected_rejections, kept = teacher_rows()
    config = write_config(
        tmp_path / "distillery.toml",
        base_url=sim.base_url,
        database_url=database_url,
        extra="[reducer]\nmax_example_tokens = 2000\n",
    )
    source = write_jsonl(tmp_path / "prompts.jsonl", rows)
    workers.start(config, concurrency=8)
    workers.start(config, concurrency=8)
    job_id, engine, _ = submit_file(source, config)

    job = wait_for_job(engine, job_id, workers)
    assert job.status == JobStatus.FINISHED
    assert (job.total, job.completed, job.failed) == (200, 200, 0)

    prompts = prompts_of(engine, job_id)
    assert len(prompts) == 200
    assert all(p.status == PromptStatus.SUCCEEDED and p.response for p in prompts)
    attempts = attempts_of(engine, job_id)
    assert Counter(a.prompt_id for a in attempts) == Counter({p.id: 1 for p in prompts})
    assert all(a.status == AttemptStatus.OK and a.http_status == 200 for a in attempts)
    for prompt in prompts:  # the prompt's totals are its attempt's usage, priced by the tier
        assert prompt.completion_tokens > 0
        assert prompt.cost_usd == pytest.approx(
            (prompt.prompt_tokens + prompt.completion_tokens) * 5.0 / 1000
        )

    record = wait_for_training_file(engine, job_id, workers)
    assert record.rejected == expected_rejections
    assert record.examples == len(kept)
    lines = read_jsonl(record.path)
    assert len(lines) == len(kept)
    by_idx = {p.idx: p for p in prompts}
    for line, idx in zip(lines, sorted(kept), strict=True):
        roles = [m["role"] for m in line["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert line["messages"][1]["content"] == rows[idx]["prompt"]
        assert line["messages"][2]["content"] == by_idx[idx].response


def test_alpaca_seed_tasks(tmp_path: Path, sim: Any, sqlite_url: str, workers: Any) -> None:
    import json

    tasks = [
        json.loads(line) for line in shared_data("alpaca_seed_tasks.jsonl").read_text().splitlines()
    ]
    rows = []
    for task in tasks:
        instance = task["instances"][0]["input"]
        prompt = task["instruction"] + (f"\n\n{instance}" if instance else "")
        rows.append({"prompt": prompt, "custom_id": task["id"], "metadata": {"name": task["name"]}})
    config = write_config(
        tmp_path / "distillery.toml", base_url=sim.base_url, database_url=sqlite_url
    )
    workers.start(config, concurrency=16)
    job_id, engine, _ = submit_file(write_jsonl(tmp_path / "alpaca.jsonl", rows), config)

    job = wait_for_job(engine, job_id, workers)
    assert (job.total, job.completed) == (175, 175)
    record = wait_for_training_file(engine, job_id, workers)
    prompts = prompts_of(engine, job_id)
    assert [p.custom_id for p in prompts] == [t["id"] for t in tasks]
    assert record.examples + sum(record.rejected.values()) == 175
    assert record.examples == len(read_jsonl(record.path))


def test_retries_on_500_and_429(tmp_path: Path, sim: Any, sqlite_url: str, workers: Any) -> None:
    config = write_config(
        tmp_path / "distillery.toml", base_url=sim.base_url, database_url=sqlite_url, max_retries=8
    )
    rows = [
        {"prompt": f"Describe {topic} in detail, part {i}."} for i, topic in enumerate(TOPICS * 4)
    ]
    sim.fail_next(25, status=500)
    job_id, engine, _ = submit_file(write_jsonl(tmp_path / "p.jsonl", rows), config)
    workers.start(config, concurrency=4)
    wait_for_job(engine, job_id, workers)
    sim.fail_next(10, status=429, retry_after=1)
    # A second job right after meets the 429s (other prompts: the same ones would be
    # answered from the response cache, with no call).
    again = [{"prompt": row["prompt"] + " Once more."} for row in rows]
    job2, _, _ = submit_file(write_jsonl(tmp_path / "q.jsonl", again), config)
    for jid in (job_id, job2):
        job = wait_for_job(engine, jid, workers)
        assert (job.completed, job.failed) == (40, 0)
    attempts = attempts_of(engine, job_id) + attempts_of(engine, job2)
    statuses = Counter((a.status, a.http_status) for a in attempts)
    assert statuses[(AttemptStatus.ERROR, 500)] == 25
    assert statuses[(AttemptStatus.RATE_LIMITED, 429)] == 10
    assert statuses[(AttemptStatus.OK, 200)] == 80


def test_prompt_fails_after_last_retry(
    tmp_path: Path, sim: Any, sqlite_url: str, workers: Any
) -> None:
    sim.configure(None, error_rate=1.0)
    config = write_config(
        tmp_path / "distillery.toml", base_url=sim.base_url, database_url=sqlite_url, max_retries=2
    )
    rows = [{"prompt": f"Question number {i} about the weather?"} for i in range(12)]
    workers.start(config, concurrency=4)
    job_id, engine, _ = submit_file(write_jsonl(tmp_path / "p.jsonl", rows), config)
    job = wait_for_job(engine, job_id, workers)
    assert job.status == JobStatus.FINISHED
    assert (job.completed, job.failed) == (0, 12)
    prompts = prompts_of(engine, job_id)
    assert len(prompts) == 12
    assert all(p.status == PromptStatus.FAILED and "HTTP 500" in (p.error or "") for p in prompts)
    assert Counter(a.prompt_id for a in attempts_of(engine, job_id)) == Counter(
        {p.id: 3 for p in prompts}
    )
    record = wait_for_training_file(engine, job_id, workers)
    assert record.examples == 0 and record.rejected == {"no_answer": 12}


def test_one_worker_keeps_hundreds_of_calls_in_flight(
    tmp_path: Path, sqlite_url: str, workers: Any
) -> None:
    """A tier's `concurrency` is the calls in flight per worker, however many messages
    carry them: 600 prompts, one worker, 250 in flight, the simulator at 1 s per call.
    Every call then waits on the same few shared things (the rate limiter's Redis
    connections, the ledger writer): none of them may turn the crowd into failures."""
    from simulator import ModelBehaviour, SimConfig, start_in_thread

    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=1000))) as slow:
        config = write_config(
            tmp_path / "distillery.toml",
            base_url=slow.base_url,
            database_url=sqlite_url,
            concurrency=250,
            enqueue_batch=25,
        )
        rows = [{"prompt": f"Explain {TOPICS[i % 10]}, take {i}."} for i in range(600)]
        workers.start(config, concurrency=12)  # messages at once: 12 x 25 prompts > 250
        job_id, engine, _ = submit_file(write_jsonl(tmp_path / "p.jsonl", rows), config)
        job = wait_for_job(engine, job_id, workers)
        assert (job.completed, job.failed) == (600, 0)
        assert slow.stats()["requests"] == 600
        calls = attempts_of(engine, job_id)
    # The simulator answers after 1 s: calls that overlap in time were in flight together.
    starts = sorted(a.started_at.timestamp() for a in calls)
    most = max(
        sum(1 for t in starts[i : i + 300] if t < start + 0.9) for i, start in enumerate(starts)
    )
    assert most >= 200, most
    logs = workers.log_text()
    assert "Traceback" not in logs and "retry:" not in logs.lower()  # not one message retried


def test_a_lost_reduce_message_is_sent_again(
    tmp_path: Path, sim: Any, sqlite_url: str, workers: Any, clean_redis: Any
) -> None:
    """The reduce message goes out after the commit that finishes the job, so a worker that
    dies in between loses it. Here the job finishes on a worker without the control queue
    and its reduce message (and its lease ticket) is then deleted from Redis: the sweeper
    finds the finished job without a training file and nobody holding its reducer, and
    sends one; the job is reduced once, and a second reduce message changes nothing."""
    from sqlmodel import Session, select

    from models import TrainingFile
    from tests.helpers.recovery import FAST_RECOVERY, REDUCER_SENT
    from workers.app import CONTROL_QUEUE
    from workers.leases import QUEUED
    from workers.tasks import reduce

    config = write_config(
        tmp_path / "distillery.toml",
        base_url=sim.base_url,
        database_url=sqlite_url,
        extra=FAST_RECOVERY,
    )
    rows = [{"prompt": f"Explain {topic} to a student."} for topic in TOPICS]
    workers.start(config, control=False)
    job_id, engine, _ = submit_file(write_jsonl(tmp_path / "p.jsonl", rows), config)
    assert wait_for_job(engine, job_id, workers).completed == len(TOPICS)
    # The reduce message, sent once the commit that finished the job is durable, waiting:
    wait_until(lambda: clean_redis.llen(CONTROL_QUEUE) == 1, timeout=30, what="reduce message")
    clean_redis.delete(CONTROL_QUEUE, QUEUED)  # ... and lost, with every trace of it

    workers.start(config, tiers="frontier")  # with the control queue
    record = wait_for_training_file(engine, job_id, workers)
    assert record.examples == len(TOPICS)
    assert REDUCER_SENT in workers.log_text()

    reduce.apply_async((job_id,), queue=CONTROL_QUEUE)
    wait_until(
        lambda: "already has a training file" in workers.log_text(),
        timeout=60,
        what="the duplicate",
    )
    with Session(engine) as session:
        files = session.exec(select(TrainingFile).where(TrainingFile.job_id == job_id)).all()
    assert len(files) == 1
