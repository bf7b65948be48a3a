"""The response cache against the simulator over real HTTP, with real Redis, real worker
processes, and SQLite and PostgreSQL: a request answered before is answered from the ledger
(attempt status `cached`, cost 0, a pointer to the attempt that paid), with no call."""

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlmodel import Session, select

from models import AttemptStatus, CachedResponse, JobStatus, PromptStatus
from producer.cli import main as cli
from tests.helpers.config import write_config
from tests.helpers.pipeline import attempts_of, prompts_of, submit_file, wait_for_job, write_jsonl
from workers.chat import ChatRequest
from workers.response_cache import cache_key
from workers.settings import TierConfig

TIER = TierConfig(name="t", base_url="http://127.0.0.1:9/v1", model="m")  # type: ignore[arg-type]
BASE = ChatRequest([{"role": "user", "content": "hi"}], 0.7, 100)


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"prompt": f"Explain idea number {i} to a student."} for i in range(start, start + n)]


def sim_requests(sim: Any) -> int:
    return int(sim.stats().get("requests", 0))


def test_key_changes_with_everything_that_decides_the_answer() -> None:
    key = cache_key(TIER, BASE)
    assert key == cache_key(TIER, ChatRequest([{"role": "user", "content": "hi"}], 0.7, 100))
    variants = [
        ChatRequest([{"role": "user", "content": "hi!"}], 0.7, 100),
        ChatRequest([{"role": "system", "content": "x"}, *BASE.messages], 0.7, 100),
        ChatRequest(BASE.messages, 0.2, 100),
        ChatRequest(BASE.messages, 0.7, 99),
        ChatRequest(BASE.messages, 0.7, 100, logprobs=True),
        ChatRequest(BASE.messages, 0.7, 100, extra={"seed": 1}),
        ChatRequest(BASE.messages, 0.7, 100, extra={"seed": 2}),
        ChatRequest(BASE.messages, 0.7, 100, extra={"top_p": 0.9}),
    ]
    keys = {cache_key(TIER, request) for request in variants}
    assert len(keys) == len(variants) and key not in keys
    other_model = TIER.model_copy(update={"model": "m2"})
    assert cache_key(other_model, BASE) != key
    # The tier's name, URL and price are not part of it: the same model, the same answer.
    renamed = TIER.model_copy(update={"name": "u", "input_per_1k": 9.0})
    assert cache_key(renamed, BASE) == key


def test_a_second_job_is_answered_from_the_cache(
    tmp_path: Path, sim: Any, database_url: str, workers: Any
) -> None:
    config = write_config(tmp_path / "d.toml", base_url=sim.base_url, database_url=database_url)
    source = write_jsonl(tmp_path / "p.jsonl", rows(30))
    workers.start(config, concurrency=8)
    first, engine, _ = submit_file(source, config)
    assert wait_for_job(engine, first, workers).completed == 30
    calls = sim_requests(sim)

    second, _, _ = submit_file(source, config)
    job = wait_for_job(engine, second, workers)
    assert (job.status, job.completed, job.failed) == (JobStatus.FINISHED, 30, 0)
    assert sim_requests(sim) == calls  # not one call
    originals = {a.prompt_id: a for a in attempts_of(engine, first)}
    by_idx = {p.idx: p for p in prompts_of(engine, first)}
    cached = attempts_of(engine, second)
    assert len(cached) == 30
    assert all(a.status == AttemptStatus.CACHED and a.cost_usd == 0 for a in cached)
    original_ids = {a.id for a in originals.values()}
    assert {a.cached_from for a in cached} == original_ids
    for prompt in prompts_of(engine, second):  # the same answer, at no cost
        assert prompt.response == by_idx[prompt.idx].response
        assert prompt.status == PromptStatus.SUCCEEDED and prompt.cost_usd == 0

    status = json.loads(cli_ok(["status", str(second), "--json"], config))
    assert status["attempts"] == 0  # model calls
    saved = sum(a.cost_usd for a in originals.values())
    assert status["cache"]["hits"] == 30
    assert status["cache"]["saved_usd"] == pytest.approx(saved, rel=1e-6)
    report = json.loads(cli_ok(["report", str(second), "--json"], config))
    assert report["cache"]["hits"] == 30
    assert "cache hits" in cli_ok(["status", str(second)], config)


def test_no_cache_flag_and_tier_setting_turn_it_off(
    tmp_path: Path, sim: Any, sqlite_url: str, workers: Any
) -> None:
    config = write_config(tmp_path / "d.toml", base_url=sim.base_url, database_url=sqlite_url)
    source = write_jsonl(tmp_path / "p.jsonl", rows(10))
    workers.start(config, concurrency=8)
    first, engine, _ = submit_file(source, config)
    wait_for_job(engine, first, workers)
    calls = sim_requests(sim)
    again, _, _ = submit_file(source, config, overrides={"cache": False})
    wait_for_job(engine, again, workers)
    assert sim_requests(sim) == calls + 10
    assert {a.status for a in attempts_of(engine, again)} == {AttemptStatus.OK}
    workers.stop()

    off = write_config(
        tmp_path / "off.toml", base_url=sim.base_url, database_url=sqlite_url, cache=False
    )
    workers.start(off, concurrency=8)
    fresh = write_jsonl(tmp_path / "q.jsonl", rows(10, start=100))
    for _ in range(2):  # neither read nor written: both runs call
        job_id, _, _ = submit_file(fresh, off)
        wait_for_job(engine, job_id, workers)
        assert {a.status for a in attempts_of(engine, job_id)} == {AttemptStatus.OK}
    assert sim_requests(sim) == calls + 30
    with Session(engine) as session:  # the first job's 10 answers only
        assert len(session.exec(select(CachedResponse)).all()) == 10


def test_rerun_of_a_half_finished_job_answers_the_known_half_from_the_cache(
    tmp_path: Path, sim: Any, database_url: str, workers: Any
) -> None:
    config = write_config(tmp_path / "d.toml", base_url=sim.base_url, database_url=database_url)
    workers.start(config, concurrency=8)
    known = write_jsonl(tmp_path / "half.jsonl", rows(20))
    first, engine, _ = submit_file(known, config)
    wait_for_job(engine, first, workers)
    calls = sim_requests(sim)

    whole = write_jsonl(tmp_path / "whole.jsonl", rows(40))  # the same 20, then 20 new
    second, _, _ = submit_file(whole, config)
    job = wait_for_job(engine, second, workers)
    assert job.completed == 40
    assert sim_requests(sim) == calls + 20
    statuses = {p.idx: p.status for p in prompts_of(engine, second)}
    assert set(statuses.values()) == {PromptStatus.SUCCEEDED}
    by_prompt = {a.prompt_id: a.status for a in attempts_of(engine, second)}
    idx_of = {p.id: p.idx for p in prompts_of(engine, second)}
    cached_idx = {idx_of[pid] for pid, status in by_prompt.items() if status == "cached"}
    assert cached_idx == set(range(20))


def test_dry_run_counts_what_the_cache_answers_and_stores_nothing(
    tmp_path: Path, sim: Any, database_url: str, workers: Any
) -> None:
    config = write_config(tmp_path / "d.toml", base_url=sim.base_url, database_url=database_url)
    workers.start(config, concurrency=8)
    first, engine, _ = submit_file(write_jsonl(tmp_path / "a.jsonl", rows(12)), config)
    wait_for_job(engine, first, workers)
    both = write_jsonl(tmp_path / "b.jsonl", rows(30))
    jobs_before = cli_ok(["jobs", "--json"], config)

    data = json.loads(cli_ok(["submit", str(both), "--dry-run", "--json"], config))
    assert data["stored"] is False and data["prompts"] == 30
    (tier,) = data["tiers"]
    assert tier["tier"] == "frontier" and tier["cached"] == 12
    assert tier["completion_tokens"] == 30 * 256  # no max_tokens: the default estimate
    assert tier["batch_usd"] == pytest.approx(tier["online_usd"] * 0.5)
    assert tier["online_after_cache_usd"] == pytest.approx(tier["online_usd"] * 18 / 30)
    assert cli_ok(["jobs", "--json"], config) == jobs_before

    capped = json.loads(
        cli_ok(["submit", str(both), "--dry-run", "--json", "--max-tokens", "50"], config)
    )
    assert capped["total"]["completion_tokens"] == 30 * 50
    assert capped["total"]["cached"] == 0  # other max_tokens, other requests
    text = cli_ok(["submit", str(both), "--dry-run", "--no-cache"], config)
    assert "dry run" in text and "cache is off" in text


def test_dry_run_reports_a_bad_file_and_stores_nothing(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    config = write_config(
        tmp_path / "d.toml", base_url="http://127.0.0.1:9/v1", database_url=f"sqlite:///{db}"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\nnot json\n', encoding="utf-8")
    result = run_cli(["submit", str(bad), "--dry-run"], config)
    assert result.exit_code == 3 and "bad.jsonl:2: invalid JSON" in result.output
    good = write_jsonl(tmp_path / "good.jsonl", rows(3))
    assert run_cli(["submit", str(good), "--dry-run"], config).exit_code == 0
    assert not db.exists()  # no database file, no table, no job


def run_cli(args: list[str], config: Path) -> Any:
    from workers.settings import get_settings

    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, args, env={"DISTILLERY_CONFIG": str(config)})
    finally:
        get_settings.cache_clear()


def cli_ok(args: list[str], config: Path) -> str:
    result = run_cli(args, config)
    assert result.exit_code == 0, result.output
    return str(result.output)


def test_a_route_job_again_escalates_the_same_way_without_a_call(
    tmp_path: Path, tiered_sim: Any, sqlite_url: str, workers: Any
) -> None:
    """A route job's cached answers keep their logprobs: the same confidence, so the same
    escalation, and no tier is called."""
    from models import Fallback, JobMode
    from tests.helpers.routing import CASES, route_config, start_tier_workers

    rows = [{"prompt": f"{text} (case {n})"} for n, (text, _, _) in enumerate(CASES)]
    config = route_config(tmp_path, tiered_sim, sqlite_url)
    start_tier_workers(workers, config)
    source = write_jsonl(tmp_path / "q.jsonl", rows)
    first, engine, _ = submit_file(source, config, mode=JobMode.ROUTE, router="rules")
    wait_for_job(engine, first, workers)
    calls = sim_requests(tiered_sim)
    second, _, _ = submit_file(source, config, mode=JobMode.ROUTE, router="rules")
    job = wait_for_job(engine, second, workers)
    assert job.completed == len(rows) and sim_requests(tiered_sim) == calls

    def trace(job_id: int) -> list[tuple[Any, ...]]:
        return [
            (p.routed_tier, p.final_tier, p.fell_back, p.confidence, p.response)
            for p in prompts_of(engine, job_id)
        ]

    assert trace(second) == trace(first)
    assert {a.status for a in attempts_of(engine, second)} == {AttemptStatus.CACHED}
    with Session(engine) as session:
        fell_back = session.exec(select(Fallback).where(Fallback.job_id == second)).all()
    assert len(fell_back) == job.fell_back > 0
