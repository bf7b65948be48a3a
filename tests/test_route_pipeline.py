"""Routed inference end to end: real worker processes (one per tier queue), the simulator's
known low-confidence answers, the cascade, the fallbacks ledger and the report."""

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from models import Fallback, FallbackReason, JobMode, JobStatus, PromptStatus
from simulator import RunningSimulator
from tests.helpers.config import PRICES
from tests.helpers.pipeline import attempts_of, prompts_of, submit_file, wait_for_job, write_jsonl
from tests.helpers.routing import CASES, route_config, start_tier_workers


def test_cascade_with_known_confidences(
    tmp_path: Path, tiered_sim: RunningSimulator, database_url: str, workers: Any
) -> None:
    rows = [
        {"prompt": f"{text} (case {n})", "custom_id": f"c{n}-{i}"}
        for n, (text, _, _) in enumerate(CASES)
        for i in range(4)
    ]
    config = route_config(tmp_path, tiered_sim, database_url)
    start_tier_workers(workers, config)
    job_id, engine, settings = submit_file(
        write_jsonl(tmp_path / "q.jsonl", rows), config, mode=JobMode.ROUTE, router="rules"
    )
    job = wait_for_job(engine, job_id, workers)
    assert job.status == JobStatus.FINISHED and job.completed == len(rows)

    prompts = prompts_of(engine, job_id)
    expected = [(routed, final) for _, routed, final in CASES for _ in range(4)]
    assert [(p.routed_tier, p.final_tier) for p in prompts] == expected
    assert [p.fell_back for p in prompts] == [r != f for r, f in expected]
    assert job.fell_back == sum(r != f for r, f in expected)
    with Session(engine) as session:
        fallbacks = session.exec(select(Fallback).where(Fallback.job_id == job_id)).all()
    by_prompt = {f.prompt_id: f for f in fallbacks}
    assert len(fallbacks) == len(by_prompt) == job.fell_back
    for prompt in prompts:
        if prompt.fell_back:
            fb = by_prompt[prompt.id]
            assert (fb.from_tier, fb.to_tier, fb.reason) == (
                prompt.routed_tier,
                "frontier",
                FallbackReason.LOW_CONFIDENCE,
            )
            assert fb.confidence is not None and fb.confidence < fb.threshold == 0.8
        assert prompt.confidence is not None and prompt.confidence >= 0.8
    # A prompt's totals add up its attempts.
    attempts = attempts_of(engine, job_id)
    for prompt in prompts:
        mine = [a for a in attempts if a.prompt_id == prompt.id]
        assert len(mine) == 1 + prompt.fell_back
        assert prompt.cost_usd == pytest.approx(sum(a.cost_usd for a in mine))
        assert prompt.latency_ms == pytest.approx(sum(a.latency_ms for a in mine))
    check_report_against_rows(engine, job_id, settings, prompts, attempts, fallbacks)


def check_report_against_rows(
    engine: Any,
    job_id: int,
    settings: Any,
    prompts: list[Any],
    attempts: list[Any],
    fallbacks: list[Any],
) -> None:
    from producer.report import build_report

    with Session(engine) as session:
        report = build_report(session, job_id, tiers=settings.tiers)
    routed = Counter(p.routed_tier for p in prompts)
    final = Counter(p.final_tier for p in prompts)
    for tier in settings.tiers:
        assert report["routed_distribution"][tier]["count"] == routed[tier]
        assert report["final_distribution"][tier]["count"] == final[tier]
    assert report["fallbacks"]["prompts_fell_back"] == sum(p.fell_back for p in prompts)
    assert report["fallbacks"]["by_reason"] == dict(Counter(f.reason for f in fallbacks))
    assert report["fallbacks"]["above_target"] == (report["fallbacks"]["rate"] > 0.15)
    routed_cost = sum(a.cost_usd for a in attempts)
    assert report["cost"]["routed_usd"] == pytest.approx(routed_cost, abs=1e-5)
    final_ok = {p.id: p.final_tier for p in prompts}
    frontier = sum(
        (a.prompt_tokens + a.completion_tokens) * PRICES["frontier"] / 1000
        for a in attempts
        if a.status == "ok" and a.tier == final_ok[a.prompt_id]
    )
    assert report["cost"]["all_frontier_usd"] == pytest.approx(frontier, abs=1e-5)
    savings = 100 * (1 - routed_cost / frontier)
    assert report["cost"]["savings_pct"] == pytest.approx(savings, abs=1e-3)


def test_small_tier_errors_escalate(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    tiered_sim.configure("sim-small", error_rate=1.0)
    config = route_config(tmp_path, tiered_sim, sqlite_url, max_retries=1)
    rows = [{"prompt": f"[easy] What is {n} plus {n}?"} for n in range(8)]
    start_tier_workers(workers, config)
    job_id, engine, _ = submit_file(
        write_jsonl(tmp_path / "q.jsonl", rows), config, mode=JobMode.ROUTE, router="rules"
    )
    job = wait_for_job(engine, job_id, workers)
    assert (job.completed, job.failed, job.fell_back) == (8, 0, 8)
    prompts = prompts_of(engine, job_id)
    assert len(prompts) == 8
    assert all(p.routed_tier == "small" and p.final_tier == "frontier" for p in prompts)
    assert all(p.status == PromptStatus.SUCCEEDED for p in prompts)
    with Session(engine) as session:
        reasons = [
            f.reason for f in session.exec(select(Fallback).where(Fallback.job_id == job_id))
        ]
    assert reasons == [FallbackReason.ERROR] * 8
    small_calls = [a for a in attempts_of(engine, job_id) if a.tier == "small"]
    assert len(small_calls) == 16 and all(a.http_status == 500 for a in small_calls)


def test_last_tier_failure_fails_the_prompt(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    tiered_sim.configure(None, error_rate=1.0)
    for model in ("sim-small", "sim-medium", "sim-frontier"):
        tiered_sim.configure(model, error_rate=1.0)
    config = route_config(tmp_path, tiered_sim, sqlite_url, max_retries=0)
    start_tier_workers(workers, config)
    job_id, engine, _ = submit_file(
        write_jsonl(tmp_path / "q.jsonl", [{"prompt": "[easy] Hi?"}]),
        config,
        mode=JobMode.ROUTE,
        router="rules",
    )
    job = wait_for_job(engine, job_id, workers)
    assert (job.completed, job.failed) == (0, 1)
    (prompt,) = prompts_of(engine, job_id)
    assert prompt.final_tier == "frontier" and "HTTP 500" in (prompt.error or "")


def test_llm_routed_job_records_the_routers_calls(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    """The llm router asks the cheapest tier through the workers' one call path: each
    decision is an attempt with purpose `route` on that tier (priced, and in the prompt's
    totals), and a router call that fails is retried like any call, each try on record."""
    from models import AttemptPurpose, AttemptStatus

    easy = [{"prompt": f"[easy] What is {n} plus {n}?"} for n in range(6)]
    hard = [{"prompt": f"[hard] Prove theorem number {n}."} for n in range(6)]
    config = route_config(tmp_path, tiered_sim, sqlite_url)
    start_tier_workers(workers, config)
    tiered_sim.fail_next(1, status=503)  # the first router call fails once, then answers
    job_id, engine, _ = submit_file(
        write_jsonl(tmp_path / "q.jsonl", easy + hard), config, mode=JobMode.ROUTE, router="llm"
    )
    job = wait_for_job(engine, job_id, workers)
    assert job.status == JobStatus.FINISHED and job.completed == 12

    prompts = prompts_of(engine, job_id)
    assert [p.routed_tier for p in prompts] == ["small"] * 6 + ["frontier"] * 6
    attempts = attempts_of(engine, job_id)
    routing = [a for a in attempts if a.purpose == AttemptPurpose.ROUTE]
    assert all(a.tier == "small" and a.model == "sim-small" for a in routing)
    answered = [a for a in routing if a.status == AttemptStatus.OK]
    assert sorted(a.prompt_id for a in answered) == sorted(p.id for p in prompts)  # one each
    failed = [a for a in routing if a.status != AttemptStatus.OK]
    assert [a.http_status for a in failed] == [503]
    for a in answered:
        assert a.cost_usd == pytest.approx(
            (a.prompt_tokens + a.completion_tokens) * PRICES["small"] / 1000
        )
    for prompt in prompts:
        mine = [a for a in attempts if a.prompt_id == prompt.id]
        assert prompt.cost_usd == pytest.approx(sum(a.cost_usd for a in mine))
        assert prompt.router_latency_ms is not None and prompt.router_latency_ms > 0


def test_a_worker_without_tiers_consumes_every_tier_and_control(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    """`distillery worker` with no --tiers answers on every configured tier, routes
    (control) and escalates, as `celery worker` consumes every declared queue."""
    rows = [{"prompt": f"{text} (case {n})"} for n, (text, _, _) in enumerate(CASES)]
    config = route_config(tmp_path, tiered_sim, sqlite_url)
    workers.start(config, tiers=None)
    job_id, engine, _ = submit_file(
        write_jsonl(tmp_path / "q.jsonl", rows), config, mode=JobMode.ROUTE, router="rules"
    )
    job = wait_for_job(engine, job_id, workers)
    assert job.status == JobStatus.FINISHED and job.completed == len(rows)
    prompts = prompts_of(engine, job_id)
    assert [(p.routed_tier, p.final_tier) for p in prompts] == [(r, f) for _, r, f in CASES]
    banner = workers.log_text()
    assert all(f".> {queue} " in banner for queue in ("small", "medium", "frontier", "control"))
