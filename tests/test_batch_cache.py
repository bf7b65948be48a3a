"""The response cache on the Batch API path, against the simulator over real HTTP with real
Redis, worker processes, SQLite and PostgreSQL: a batch job answers its cache hits before
packing (only the misses go into a batch file), and every answered batch line goes into the
cache at the batch price, for later batch and online jobs alike."""

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from models import AttemptStatus, CachedResponse, JobStatus, PromptStatus
from simulator import RunningSimulator
from tests.helpers.batches import FAST_POLLS, batches_of, provider_batches, rows
from tests.helpers.config import write_config
from tests.helpers.faults import run_cli
from tests.helpers.pipeline import (
    attempts_of,
    prompts_of,
    submit_file,
    wait_for_job,
    wait_for_training_file,
    write_jsonl,
)

BATCH = {"via": "batch"}
MONTHLY = ("--monthly-requests", "1000", "--strategies", "all-frontier")


def start(
    tmp_path: Path, sim: RunningSimulator, database_url: str, workers: Any, **tier: Any
) -> Path:
    config = write_config(
        tmp_path / "distillery.toml",
        base_url=sim.base_url,
        database_url=database_url,
        extra="[reducer]\nmin_length = 0\n",
        batch_max_requests=5,
        **FAST_POLLS,
        **tier,
    )
    workers.start(config, concurrency=4)
    return config


def assert_all_cached(engine: Any, job_id: int, paid: dict[int, Any]) -> None:
    """Every prompt succeeded with one `cached` attempt, cost 0, pointing at the attempt
    that paid for the same prompt text (`paid`: by prompt idx)."""
    attempts = {a.prompt_id: a for a in attempts_of(engine, job_id)}
    prompts = prompts_of(engine, job_id)
    assert len(attempts_of(engine, job_id)) == len(prompts)
    for prompt in prompts:
        attempt = attempts[prompt.id]
        assert (attempt.status, attempt.cost_usd, attempt.batch_id) == (
            AttemptStatus.CACHED, 0.0, None
        )  # fmt: skip
        assert attempt.cached_from == paid[prompt.idx].id
        assert prompt.status == PromptStatus.SUCCEEDED and prompt.cost_usd == 0


def paid_attempts(engine: Any, job_id: int) -> dict[int, Any]:
    idx_of = {p.id: p.idx for p in prompts_of(engine, job_id)}
    return {
        idx_of[a.prompt_id]: a for a in attempts_of(engine, job_id) if a.status == AttemptStatus.OK
    }


def test_batch_answers_feed_later_batch_and_online_jobs(
    tmp_path: Path, batch_sim: RunningSimulator, database_url: str, workers: Any
) -> None:
    config = start(tmp_path, batch_sim, database_url, workers)
    source = write_jsonl(tmp_path / "prompts.jsonl", rows(12))
    first, engine, _ = submit_file(source, config, overrides=BATCH)
    assert wait_for_job(engine, first, workers).completed == 12
    assert len(provider_batches(batch_sim)) == 3
    paid = paid_attempts(engine, first)
    assert len(paid) == 12 and all(a.batch_id is not None for a in paid.values())
    with Session(engine) as session:  # stored at the batch price actually paid
        cached = {row.attempt_id: row for row in session.exec(select(CachedResponse))}
    assert sorted(cached) == sorted(a.id for a in paid.values())
    assert all(cached[a.id].cost_usd == pytest.approx(a.cost_usd) for a in paid.values())
    simulated = run_cli(config, "cost", "simulate", "--job", str(first), *MONTHLY, "--json")
    answers = json.loads(simulated)["recorded"]["answers"]
    assert (answers["batch"]["answers"], answers["batch"]["share"]) == (12, 1.0)
    assert answers["batch"]["cost_usd"] == pytest.approx(sum(a.cost_usd for a in paid.values()))
    assert answers["online"]["answers"] == 0
    shown = run_cli(config, "cost", "simulate", "--job", str(first), *MONTHLY)
    assert "answers: 12 by batch (100%" in shown and "0 online" in shown

    again, _, _ = submit_file(source, config, overrides=BATCH)  # the same prompts by batch
    job = wait_for_job(engine, again, workers)
    assert (job.status, job.completed, job.failed) == (JobStatus.FINISHED, 12, 0)
    assert batches_of(engine, again) == [] and len(provider_batches(batch_sim)) == 3
    assert_all_cached(engine, again, paid)
    assert wait_for_training_file(engine, again, workers).examples == 12  # reduced too

    online, _, _ = submit_file(source, config)  # and online: no call either
    assert wait_for_job(engine, online, workers).completed == 12
    assert_all_cached(engine, online, paid)
    assert batch_sim.stats().get("requests", 0) == 0


def test_batch_sends_only_its_misses_and_no_cache_sends_all(
    tmp_path: Path, batch_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    config = start(tmp_path, batch_sim, sqlite_url, workers)
    known = write_jsonl(tmp_path / "known.jsonl", rows(4))
    first, engine, _ = submit_file(known, config)  # online first
    assert wait_for_job(engine, first, workers).completed == 4
    paid = paid_attempts(engine, first)
    assert batch_sim.stats()["requests"] == 4

    whole = write_jsonl(tmp_path / "whole.jsonl", rows(7))  # the same 4, then 3 new
    second, _, _ = submit_file(whole, config, overrides=BATCH)
    assert wait_for_job(engine, second, workers).completed == 7
    [batch] = batches_of(engine, second)
    assert (batch.lines, batch.answered) == (3, 3)  # only the misses were sent
    by_idx = {p.idx: p for p in prompts_of(engine, second)}
    statuses = {by_idx[i].id: None for i in range(7)}
    for attempt in attempts_of(engine, second):
        statuses[attempt.prompt_id] = attempt.status
    assert [statuses[by_idx[i].id] for i in range(7)] == ["cached"] * 4 + ["ok"] * 3
    cached = [a for a in attempts_of(engine, second) if a.status == AttemptStatus.CACHED]
    assert {a.cached_from for a in cached} == {a.id for a in paid.values()}
    assert batch_sim.stats()["requests"] == 4  # no online call either
    with Session(engine) as session:
        stored = len(session.exec(select(CachedResponse)).all())
    assert stored == 7

    fresh, _, _ = submit_file(whole, config, overrides={**BATCH, "cache": False})
    assert wait_for_job(engine, fresh, workers).completed == 7
    assert [b.lines for b in batches_of(engine, fresh)] == [5, 2]  # every prompt sent
    assert {a.status for a in attempts_of(engine, fresh)} == {AttemptStatus.OK}
    with Session(engine) as session:  # neither read nor written
        assert len(session.exec(select(CachedResponse)).all()) == stored


def test_tier_cache_off_batches_every_time_and_stores_nothing(
    tmp_path: Path, batch_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    config = start(tmp_path, batch_sim, sqlite_url, workers, cache=False)
    source = write_jsonl(tmp_path / "prompts.jsonl", rows(3))
    for runs in (1, 2):
        job_id, engine, _ = submit_file(source, config, overrides=BATCH)
        assert wait_for_job(engine, job_id, workers).completed == 3
        assert [b.lines for b in batches_of(engine, job_id)] == [3]
        assert {a.status for a in attempts_of(engine, job_id)} == {AttemptStatus.OK}
        assert len(provider_batches(batch_sim)) == runs
    with Session(engine) as session:
        assert session.exec(select(CachedResponse)).all() == []
