"""A routed job with a real model as the small tier, to completion.

SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible server is the small tier; the
simulator plays medium and frontier. The 80 MT-bench questions (first turns) are routed by
the rules router, which sends most of them to the small tier. Each small answer's confidence
is the geometric-mean probability of the tokens the model really generated, and an answer
below the threshold escalates to frontier: real logprobs decide, not the simulator.

Kept CI-sized (a few minutes on 2 cores): answers are capped at MAX_TOKENS, decoding is
greedy so the same answers (and escalations) come back on every run, and the llama server
gets one call at a time, as it serves them anyway.
"""

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from rich.console import Console
from sqlmodel import Session, select

from models import (
    Attempt,
    AttemptStatus,
    Fallback,
    FallbackReason,
    JobMode,
    JobStatus,
    Prompt,
    PromptStatus,
)
from simulator import RunningSimulator, SimConfig, start_in_thread
from tests.helpers.config import PRICES
from tests.helpers.pipeline import attempts_of, prompts_of, submit_file, wait_for_job, write_jsonl
from tests.helpers.realmodel import MODEL_ALIAS, llama_server, require_real_model
from tests.helpers.services import shared_data
from tests.helpers.workers import Workers
from workers.confidence import geometric_mean
from workers.job_settings import JobSettings

pytestmark = pytest.mark.slow

QUESTIONS = "mt_bench_questions.jsonl"
QUESTION_COUNT = 80
MAX_TOKENS = 24
# SmolLM2's greedy 24-token answers to MT-bench score between 0.25 and 0.78 (geometric
# mean token probability), so 0.45 keeps some answers on small and escalates others. The
# unknown-confidence default (0.5) is deliberately not the threshold: an answer without
# logprobs would then be indistinguishable from a borderline one.
THRESHOLD = 0.45
UNKNOWN_CONFIDENCE = 0.5
# About 3 s per small answer on 2 idle cores (51 of them: ~3 minutes); the timeout is for
# hangs, and leaves room for a machine shared with other test runs.
JOB_TIMEOUT_S = 1200
SMALL_TIMEOUT_S = 180


@pytest.fixture
def llama_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    require_real_model()
    # llama.cpp's OpenMP threads spin between operations by default, and the server's own
    # per-token Python work (sorting the vocabulary for logprobs) starves behind them on 2
    # busy cores: measured 3x slower answers. Passive threads sleep instead (the server
    # passes OMP_* variables through).
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    with llama_server() as base_url:
        yield base_url


@pytest.fixture
def frontier_sim() -> Iterator[RunningSimulator]:
    with start_in_thread(SimConfig.tiered()) as running:
        yield running


# --- the job -------------------------------------------------------------------------------


def first_turns(path: Path) -> list[dict[str, Any]]:
    """MT-bench questions as prompt lines: the first turn is the prompt."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        question = json.loads(line)
        rows.append(
            {
                "prompt": question["turns"][0],
                "custom_id": f"mt-bench-{question['question_id']}",
                "metadata": {"category": question["category"]},
            }
        )
    return rows


def tier_block(name: str, *, base_url: str, model: str, **options: Any) -> str:
    lines = [f"[tiers.{name}]", f'base_url = "{base_url}"', f'model = "{model}"']
    lines += [f"input_per_1k = {PRICES[name]}", f"output_per_1k = {PRICES[name]}"]
    lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def real_model_config(path: Path, *, llama_url: str, sim_url: str, database_url: str) -> Path:
    """small = the llama server (no API key), one call at a time with a generous timeout;
    medium and frontier = the simulator; rules routing, escalation to frontier."""
    blocks = [
        f'database_url = "{database_url}"\noutput_dir = "{path.parent / "output"}"\n',
        tier_block(
            "small",
            base_url=llama_url,
            model=MODEL_ALIAS,
            timeout_s=SMALL_TIMEOUT_S,
            max_retries=1,
            backoff_base_s=0.5,
            concurrency=1,
        ),
        tier_block("medium", base_url=sim_url, model="sim-medium", concurrency=4),
        tier_block("frontier", base_url=sim_url, model="sim-frontier", concurrency=4),
        "[router]\n"
        'strategy = "rules"\n'
        'fallback = ["frontier"]\n'
        f"confidence_threshold = {THRESHOLD}\n"
        f"unknown_confidence = {UNKNOWN_CONFIDENCE}\n",
    ]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def run_routed_job(workers: Workers, config: Path, questions: Path) -> tuple[int, Any, Any]:
    workers.start(config, tiers="small", concurrency=1)
    workers.start(config, tiers="medium,frontier", concurrency=4)
    job_id, engine, settings = submit_file(
        questions,
        config,
        mode=JobMode.ROUTE,
        router="rules",
        overrides={"max_tokens": MAX_TOKENS, "temperature": 0.0},
    )
    job = wait_for_job(engine, job_id, workers, timeout=JOB_TIMEOUT_S)
    assert job.status == JobStatus.FINISHED, job
    assert (job.total, job.completed, job.failed) == (QUESTION_COUNT, QUESTION_COUNT, 0)
    return job_id, engine, settings


def fallbacks_of(engine: Any, job_id: int) -> list[Fallback]:
    with Session(engine) as session:
        return list(session.exec(select(Fallback).where(Fallback.job_id == job_id)))


# --- the test ------------------------------------------------------------------------------


@pytest.mark.timeout(JOB_TIMEOUT_S + 300)
def test_real_small_model_routes_mt_bench_with_logprob_confidence(
    tmp_path: Path,
    sqlite_url: str,
    llama_url: str,
    frontier_sim: RunningSimulator,
    workers: Workers,
) -> None:
    rows = first_turns(shared_data(QUESTIONS))
    assert len(rows) == QUESTION_COUNT
    config = real_model_config(
        tmp_path / "distillery.toml",
        llama_url=llama_url,
        sim_url=frontier_sim.base_url,
        database_url=sqlite_url,
    )
    questions = write_jsonl(tmp_path / "mt_bench_first_turns.jsonl", rows)
    job_id, engine, settings = run_routed_job(workers, config, questions)

    prompts = prompts_of(engine, job_id)
    attempts = attempts_of(engine, job_id)
    fallbacks = fallbacks_of(engine, job_id)
    check_every_question_answered(prompts, rows)
    small = check_small_answers_scored_by_logprobs(attempts)
    check_confidence_decided(prompts, small, fallbacks)
    check_confidence_is_the_models_own(llama_url, prompts, small)
    report = check_report_against_rows(engine, job_id, settings, prompts, attempts, fallbacks)
    print_real_report(report)


def check_every_question_answered(prompts: list[Prompt], rows: list[dict[str, Any]]) -> None:
    assert [p.messages[-1]["content"] for p in prompts] == [row["prompt"] for row in rows]
    for prompt in prompts:
        assert prompt.status == PromptStatus.SUCCEEDED, (prompt.custom_id, prompt.error)
        assert prompt.routed_tier in PRICES and prompt.final_tier in PRICES
        assert prompt.response and prompt.response.strip(), prompt.custom_id
    # The rules router must send most prompts to the real model, or this tests the simulator.
    routed = Counter(p.routed_tier for p in prompts)
    assert routed["small"] >= QUESTION_COUNT // 2, routed


def check_small_answers_scored_by_logprobs(attempts: list[Attempt]) -> dict[int, Attempt]:
    """Every answer from the llama server was scored from its logprobs; by prompt id."""
    answered = [a for a in attempts if a.tier == "small" and a.status == AttemptStatus.OK]
    assert answered, "the small tier answered nothing"
    for attempt in answered:
        assert attempt.model == MODEL_ALIAS
        assert 0 < attempt.completion_tokens <= MAX_TOKENS
        assert attempt.confidence is not None
        assert attempt.confidence != UNKNOWN_CONFIDENCE, "no logprobs: the unknown default"
        assert 0.0 < attempt.confidence <= 1.0
    by_prompt = {a.prompt_id: a for a in answered}
    assert len(by_prompt) == len(answered), "a small answer was accepted twice"
    return by_prompt


def check_confidence_decided(
    prompts: list[Prompt], small: dict[int, Attempt], fallbacks: list[Fallback]
) -> None:
    """Below the threshold: escalated to frontier with a low_confidence row; at or above:
    kept, with the small answer's confidence. And both happened."""
    escalations = {f.prompt_id: f for f in fallbacks if f.from_tier == "small"}
    for prompt in prompts:
        attempt = small.get(prompt.id or -1)
        if attempt is None:
            continue
        assert attempt.confidence is not None
        if attempt.confidence < THRESHOLD:
            check_escalated(prompt, attempt.confidence, escalations.get(prompt.id or -1))
        else:
            assert prompt.final_tier == "small" and not prompt.fell_back, prompt.custom_id
            assert prompt.confidence == pytest.approx(attempt.confidence)
    kept = [p for p in prompts if p.final_tier == "small"]
    escalated = [f for f in escalations.values() if f.reason == FallbackReason.LOW_CONFIDENCE]
    assert kept, "no small answer reached the threshold: nothing shows confidence deciding"
    assert escalated, "no small answer fell below the threshold: nothing escalated"


def check_escalated(prompt: Prompt, confidence: float, fallback: Fallback | None) -> None:
    assert fallback is not None, f"{prompt.custom_id}: confidence {confidence} not escalated"
    assert (fallback.to_tier, fallback.reason) == ("frontier", FallbackReason.LOW_CONFIDENCE)
    assert fallback.confidence == pytest.approx(confidence)
    assert fallback.threshold == THRESHOLD and confidence < THRESHOLD
    assert prompt.final_tier == "frontier" and prompt.fell_back


def check_confidence_is_the_models_own(
    llama_url: str, prompts: list[Prompt], small: dict[int, Attempt]
) -> None:
    """Ask the server again for one kept and one escalated answer (greedy, so the same tokens)
    and recompute exp(mean(logprob)) here: the stored confidence is that number."""
    scored = [p for p in prompts if p.id in small]
    samples = [
        next(p for p in scored if p.final_tier == "small"),
        next(p for p in scored if p.final_tier == "frontier"),
    ]
    client = openai.OpenAI(base_url=llama_url, api_key="unused", timeout=120, max_retries=0)
    job = JobSettings(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=True)
    for prompt in samples:
        request = job.request(prompt.messages).body(MODEL_ALIAS)
        response = client.chat.completions.create(**request)
        content = response.choices[0].logprobs.content if response.choices[0].logprobs else None
        assert content, "the llama server sent no logprobs"
        expected = geometric_mean([token.logprob for token in content])
        assert small[prompt.id or -1].confidence == pytest.approx(expected, abs=1e-3)


# --- the report ----------------------------------------------------------------------------


def check_report_against_rows(
    engine: Any,
    job_id: int,
    settings: Any,
    prompts: list[Prompt],
    attempts: list[Attempt],
    fallbacks: list[Fallback],
) -> dict[str, Any]:
    from producer.report import build_report

    with Session(engine) as session:
        report = build_report(session, job_id, tiers=settings.tiers)
    assert report["prompts"] == QUESTION_COUNT
    check_report_distribution(report, prompts)
    check_report_fallbacks(report, prompts, fallbacks)
    check_report_usage(report, attempts)
    check_report_cost(report, prompts, attempts)
    return report


def check_report_distribution(report: dict[str, Any], prompts: list[Prompt]) -> None:
    routed = Counter(p.routed_tier for p in prompts)
    final = Counter(p.final_tier for p in prompts)
    for tier in PRICES:
        assert report["routed_distribution"][tier]["count"] == routed[tier]
        assert report["final_distribution"][tier]["count"] == final[tier]
        assert report["final_distribution"][tier]["share"] == final[tier] / QUESTION_COUNT


def check_report_fallbacks(
    report: dict[str, Any], prompts: list[Prompt], fallbacks: list[Fallback]
) -> None:
    fell_back = sum(p.fell_back for p in prompts)
    section = report["fallbacks"]
    assert section["prompts_fell_back"] == fell_back == len({f.prompt_id for f in fallbacks})
    assert section["events"] == len(fallbacks)
    assert section["rate"] == pytest.approx(fell_back / QUESTION_COUNT)
    assert section["by_reason"] == dict(Counter(str(f.reason) for f in fallbacks))
    assert section["by_path"] == dict(Counter(f"{f.from_tier}→{f.to_tier}" for f in fallbacks))


def check_report_usage(report: dict[str, Any], attempts: list[Attempt]) -> None:
    for tier in PRICES:
        mine = [a for a in attempts if a.tier == tier]
        usage = report["tokens_and_cost"][tier]
        assert usage["calls"] == len(mine)
        assert usage["prompt_tokens"] == sum(a.prompt_tokens for a in mine)
        assert usage["completion_tokens"] == sum(a.completion_tokens for a in mine)
        assert usage["cost_usd"] == pytest.approx(sum(a.cost_usd for a in mine), abs=1e-6)


def check_report_cost(
    report: dict[str, Any], prompts: list[Prompt], attempts: list[Attempt]
) -> None:
    """Routed: every call. All-frontier: each prompt's final answer, priced as frontier."""
    routed = sum(a.cost_usd for a in attempts)
    final_tier = {p.id: p.final_tier for p in prompts}
    final_answers = [
        a for a in attempts if a.status == AttemptStatus.OK and a.tier == final_tier[a.prompt_id]
    ]
    tokens = sum(a.prompt_tokens + a.completion_tokens for a in final_answers)
    all_frontier = tokens * PRICES["frontier"] / 1000
    cost = report["cost"]
    assert cost["routed_usd"] == pytest.approx(routed, abs=1e-5)
    assert cost["all_frontier_usd"] == pytest.approx(all_frontier, abs=1e-5)
    assert cost["savings_pct"] == pytest.approx(100 * (1 - routed / all_frontier), abs=1e-3)
    assert math.isclose(sum(p.cost_usd for p in prompts), routed, abs_tol=1e-6)


def print_real_report(report: dict[str, Any]) -> None:
    """The report as `distillery report` prints it (shown with `pytest -rP`)."""
    from producer.report import print_report

    print_report(Console(width=100, force_terminal=False), report)
