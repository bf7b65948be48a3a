"""Teacher jobs through the Batch API: submit → Redis → real worker processes → the
simulator's /v1/files and /v1/batches over real HTTP → SQL → reducer. And its faults."""

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from models import AttemptStatus, BatchStatus, JobStatus, PromptStatus
from simulator import RunningSimulator
from tests.helpers.batches import batches_of, provider_batches, start_job
from tests.helpers.config import PRICES
from tests.helpers.faults import run_cli
from tests.helpers.pipeline import (
    attempts_of,
    prompts_of,
    wait_for_job,
    wait_for_training_file,
)


def assert_answered_once(engine: Any, job_id: int) -> list[Any]:
    """Every succeeded prompt has exactly one OK attempt, recorded after all of its failed
    ones: nothing answered was sent again."""
    attempts = attempts_of(engine, job_id)
    ok = Counter(a.prompt_id for a in attempts if a.status == AttemptStatus.OK)
    for prompt in prompts_of(engine, job_id):
        if prompt.status == PromptStatus.SUCCEEDED:
            assert ok[prompt.id] == 1, prompt.id
            mine = [a for a in attempts if a.prompt_id == prompt.id]
            answered = next(a for a in mine if a.status == AttemptStatus.OK)
            assert all(a.id < answered.id for a in mine if a is not answered)
    return attempts


def test_batch_job_end_to_end(
    tmp_path: Path, batch_sim: RunningSimulator, database_url: str, workers: Any
) -> None:
    job_id, engine, _ = start_job(
        tmp_path, batch_sim, database_url, workers, 60, batch_max_requests=25
    )
    job = wait_for_job(engine, job_id, workers)
    assert (job.status, job.completed, job.failed) == (JobStatus.FINISHED, 60, 0)
    assert wait_for_training_file(engine, job_id, workers).examples == 60
    batches = batches_of(engine, job_id)
    assert [b.lines for b in batches] == [25, 25, 10]  # within the tier's limit per file
    assert all(b.status == BatchStatus.COMPLETED and b.ingested_at for b in batches)
    assert len(provider_batches(batch_sim)) == 3
    attempts = assert_answered_once(engine, job_id)
    assert len(attempts) == 60 and all(a.batch_id is not None for a in attempts)
    for a in attempts:  # half the online price
        full = (a.prompt_tokens + a.completion_tokens) * PRICES["frontier"] / 1000
        assert a.cost_usd == pytest.approx(full * 0.5)
    assert sum(b.cost_usd for b in batches) == pytest.approx(sum(a.cost_usd for a in attempts))
    assert batch_sim.stats()["requests"] == 0  # no online chat call at all
    from producer.jobs import summary

    shown = summary(engine, job_id)
    assert shown["via"] == "batch" and shown["answers"]["batch"]["answers"] == 60
    assert [b["done"] for b in shown["batches"]] == [25, 25, 10]
    config = tmp_path / "distillery.toml"
    status = run_cli(config, "status", str(job_id))
    assert "answers: 60 by batch (100%" in status and "completed" in status
    assert "answers: 60 by batch" in run_cli(config, "report", str(job_id))


def test_errored_lines_retried_in_new_batches(
    tmp_path: Path, batch_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    batch_sim.configure(error_rate=0.4)
    job_id, engine, _ = start_job(tmp_path, batch_sim, sqlite_url, workers, 30, batch_max_tries=20)
    job = wait_for_job(engine, job_id, workers)
    assert (job.completed, job.failed) == (30, 0)
    batches = batches_of(engine, job_id)
    assert len(batches) > 1 and sum(b.errored for b in batches) > 0
    attempts = assert_answered_once(engine, job_id)
    failed = [a for a in attempts if a.status != AttemptStatus.OK]
    assert len(failed) == sum(b.errored for b in batches)
    assert [b.lines for b in batches[1:]] == [b.errored for b in batches[:-1]]  # only those


def test_error_file_only_fails_after_max_tries(
    tmp_path: Path, batch_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    batch_sim.configure(error_rate=1.0)
    job_id, engine, _ = start_job(tmp_path, batch_sim, sqlite_url, workers, 6, batch_max_tries=2)
    job = wait_for_job(engine, job_id, workers)
    assert (job.status, job.completed, job.failed) == (JobStatus.FINISHED, 0, 6)
    batches = batches_of(engine, job_id)
    assert [(b.lines, b.answered, b.errored) for b in batches] == [(6, 0, 6), (6, 0, 6)]
    assert all(b.output_file_id is None and b.error_file_id for b in batches)
    prompts = prompts_of(engine, job_id)
    assert all(
        "HTTP 500" in (p.error or "") and "2 batch tries" in (p.error or "") for p in prompts
    )
    assert Counter(a.prompt_id for a in attempts_of(engine, job_id)) == {p.id: 2 for p in prompts}


def test_expiry_keeps_half_and_retries_the_rest(
    tmp_path: Path, batch_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    batch_sim.configure_batches(expire_after_fraction=0.5)
    job_id, engine, _ = start_job(tmp_path, batch_sim, sqlite_url, workers, 10, batch_max_tries=10)
    job = wait_for_job(engine, job_id, workers)
    first = batches_of(engine, job_id)[0]
    assert (first.status, first.lines, first.answered, first.errored) == ("expired", 10, 5, 5)
    assert job.completed + job.failed == 10
    attempts = assert_answered_once(engine, job_id)
    expired = [a for a in attempts if a.batch_id == first.id and a.status != AttemptStatus.OK]
    assert len(expired) == 5 and all(a.status == AttemptStatus.TIMEOUT for a in expired)


def test_expired_lines_fall_back_online(
    tmp_path: Path, batch_sim: RunningSimulator, database_url: str, workers: Any
) -> None:
    batch_sim.configure_batches(expire_after_fraction=0.5)
    job_id, engine, _ = start_job(tmp_path, batch_sim, database_url, workers, 10, fallback="online")
    job = wait_for_job(engine, job_id, workers)
    assert (job.completed, job.failed) == (10, 0)
    assert len(batches_of(engine, job_id)) == 1
    ok = [a for a in assert_answered_once(engine, job_id) if a.status == AttemptStatus.OK]
    assert sorted(a.batch_id is None for a in ok) == [False] * 5 + [True] * 5
    assert batch_sim.stats()["requests"] == 5  # the online half, nothing more


def test_unknown_and_repeated_custom_ids_are_ignored(
    tmp_path: Path, batch_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    batch_sim.configure_batches(duplicate_lines=3, unknown_lines=2)
    job_id, engine, _ = start_job(tmp_path, batch_sim, sqlite_url, workers, 8)
    job = wait_for_job(engine, job_id, workers)
    assert (job.completed, job.failed) == (8, 0)  # never counted twice
    [batch] = batches_of(engine, job_id)
    assert (batch.answered, batch.ignored) == (8, 5)
    assert len(assert_answered_once(engine, job_id)) == 8
    assert "ignored repeated custom_id" in workers.log_text()


def test_rejected_input_fails_its_lines_with_the_providers_errors(
    tmp_path: Path, batch_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    batch_sim.configure_batches(reject_next=1)
    job_id, engine, _ = start_job(tmp_path, batch_sim, sqlite_url, workers, 4)
    job = wait_for_job(engine, job_id, workers)
    assert (job.completed, job.failed) == (0, 4)
    [batch] = batches_of(engine, job_id)
    assert batch.status == BatchStatus.FAILED and batch.errors
    assert "simulated rejection" in batch.errors[0]["message"]
    assert all(
        "refused the batch input file" in (p.error or "") for p in prompts_of(engine, job_id)
    )
    assert attempts_of(engine, job_id) == []  # nothing was run, nothing was paid
    from producer.jobs import summary

    assert summary(engine, job_id)["batches"][0]["errors"][0]["line"] == 1
    status = run_cli(tmp_path / "distillery.toml", "status", str(job_id))
    assert "refused:" in status and "simulated rejection" in status


def test_provider_unreachable_while_polling(
    tmp_path: Path, batch_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    job_id, engine, _ = start_job(tmp_path, batch_sim, sqlite_url, workers, 0 + 5)
    batch_sim.configure_batches(unavailable_next=4)  # the next 4 looks get 503
    job = wait_for_job(engine, job_id, workers)
    assert (job.completed, job.failed) == (5, 0)
    [batch] = batches_of(engine, job_id)
    assert batch.polls >= 4 + 3  # the failed looks, then validating → … → completed
    assert len(assert_answered_once(engine, job_id)) == 5
    assert "no answer from the provider" in workers.log_text()
