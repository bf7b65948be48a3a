"""The report of a routed job, on a small known scenario written straight into SQLite and
PostgreSQL; every expected number is worked out by hand below."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import HttpUrl
from rich.console import Console
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import (
    Attempt,
    AttemptPurpose,
    AttemptStatus,
    Fallback,
    FallbackReason,
    Job,
    JobMode,
    JobStatus,
    Prompt,
    PromptStatus,
    session_scope,
)
from producer.report import SAVINGS_FALLBACK_TARGET, TIMES, build_report, print_report
from producer.report_plot import plot_report
from tests.helpers.services import make_engine
from workers.settings import TierConfig

# Output tokens cost twice the input tokens, so a swapped column shows up in the costs.
TIERS = {
    name: TierConfig(
        base_url=HttpUrl("http://127.0.0.1:9/v1"),
        model=f"sim-{name}",
        input_per_1k=price,
        output_per_1k=2 * price,
    )
    for name, price in {"small": 0.1, "medium": 0.3, "frontier": 5.0}.items()
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

OK, ERROR, TIMEOUT = AttemptStatus.OK, AttemptStatus.ERROR, AttemptStatus.TIMEOUT
LOW, FAIL, SLOW = FallbackReason.LOW_CONFIDENCE, FallbackReason.ERROR, FallbackReason.TIMEOUT

# 11 prompts of a job routed by an LLM router. Each row: routed tier, final tier, status,
# fell back, answer calls (tier, status, latency ms, prompt tokens, completion tokens) in
# order, fallbacks (from, to, reason).
SCENARIO: list[dict[str, Any]] = [
    # p0-p3: routed small, answered there.
    *[
        {
            "routed": "small",
            "final": "small",
            "status": PromptStatus.SUCCEEDED,
            "calls": [("small", OK, latency, 100, 50)],
        }
        for latency in (100, 120, 140, 160)
    ],
    # p4, p5: small answered with low confidence, escalated to frontier.
    *[
        {
            "routed": "small",
            "final": "frontier",
            "status": PromptStatus.SUCCEEDED,
            "calls": [("small", OK, small_ms, 200, 100), ("frontier", OK, frontier_ms, 200, 100)],
            "fallbacks": [("small", "frontier", LOW)],
        }
        for small_ms, frontier_ms in ((110, 900), (130, 1100))
    ],
    # p6: medium failed, frontier answered.
    {
        "routed": "medium",
        "final": "frontier",
        "status": PromptStatus.SUCCEEDED,
        "calls": [("medium", ERROR, 300, 0, 0), ("frontier", OK, 1000, 300, 150)],
        "fallbacks": [("medium", "frontier", FAIL)],
    },
    # p7: routed to frontier directly.
    {
        "routed": "frontier",
        "final": "frontier",
        "status": PromptStatus.SUCCEEDED,
        "calls": [("frontier", OK, 1200, 400, 200)],
    },
    # p8: routed medium, answered there.
    {
        "routed": "medium",
        "final": "medium",
        "status": PromptStatus.SUCCEEDED,
        "calls": [("medium", OK, 250, 100, 50)],
    },
    # p9: small errored, medium timed out, frontier errored: failed after two escalations.
    {
        "routed": "small",
        "final": None,
        "status": PromptStatus.FAILED,
        "calls": [
            ("small", ERROR, 150, 0, 0),
            ("medium", TIMEOUT, 400, 0, 0),
            ("frontier", ERROR, 3000, 0, 0),
        ],
        "fallbacks": [("small", "medium", FAIL), ("medium", "frontier", SLOW)],
    },
    # p10: routed small, not answered yet.
    {"routed": "small", "final": None, "status": PromptStatus.PENDING, "calls": []},
]
# The LLM router's own call for each prompt: on small, 40 prompt + 2 completion tokens.
ROUTE_CALL = ("small", OK, 20, 40, 2)


def _insert_scenario(session: Session) -> int:
    job = Job(name="mixed", mode=JobMode.ROUTE, status=JobStatus.RUNNING, router="llm")
    job.total, job.completed, job.failed = 11, 9, 1
    session.add(job)
    session.flush()
    assert job.id is not None
    for idx, spec in enumerate(SCENARIO):
        _insert_prompt(session, job.id, idx, spec)
    return job.id


def _insert_prompt(session: Session, job_id: int, idx: int, spec: dict[str, Any]) -> None:
    fallbacks = spec.get("fallbacks", [])
    prompt = Prompt(
        job_id=job_id,
        idx=idx,
        messages=[{"role": "user", "content": f"question {idx}"}],
        status=spec["status"],
        routed_tier=spec["routed"],
        router_latency_ms=10.0 * (idx + 1),  # 10, 20, … 110 ms
        final_tier=spec["final"],
        fell_back=bool(fallbacks),
    )
    session.add(prompt)
    session.flush()
    assert prompt.id is not None
    _insert_attempt(session, prompt.id, AttemptPurpose.ROUTE, ROUTE_CALL)
    for call in spec["calls"]:
        _insert_attempt(session, prompt.id, AttemptPurpose.ANSWER, call)
    for from_tier, to_tier, reason in fallbacks:
        session.add(
            Fallback(
                job_id=job_id,
                prompt_id=prompt.id,
                from_tier=from_tier,
                to_tier=to_tier,
                reason=reason,
            )
        )


def _insert_attempt(
    session: Session, prompt_id: int, purpose: AttemptPurpose, call: tuple[Any, ...]
) -> None:
    tier, status, latency_ms, prompt_tokens, completion_tokens = call
    session.add(
        Attempt(
            prompt_id=prompt_id,
            purpose=purpose,
            tier=tier,
            model=f"sim-{tier}",
            status=status,
            latency_ms=float(latency_ms),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            # What a worker records: the provider's usage priced by the tier's config.
            cost_usd=TIERS[tier].cost_usd(prompt_tokens, completion_tokens),
        )
    )
    session.flush()  # ids in insertion order: the last successful call is the final answer


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine: Engine = make_engine(database_url)
    yield engine
    engine.dispose()  # close pooled connections before the test database is dropped


@pytest.fixture
def report(engine: Engine) -> dict[str, Any]:
    with session_scope(engine) as session:
        job_id = _insert_scenario(session)
    with Session(engine) as session:
        return build_report(session, job_id, tiers=TIERS)


def test_job_and_prompt_counts(report: dict[str, Any]) -> None:
    assert report["job"] == {
        "id": report["job"]["id"],
        "name": "mixed",
        "mode": "route",
        "status": "running",
        "router": "llm",
        "total": 11,
        "completed": 9,
        "failed": 1,
        "cancelled": 0,
    }
    assert report["prompts"] == 11


def test_distributions_cover_every_tier_in_config_order(report: dict[str, Any]) -> None:
    # routed: small p0-p5, p9, p10; medium p6, p8; frontier p7.
    assert report["routed_distribution"] == {
        "small": {"count": 8, "share": pytest.approx(8 / 11)},
        "medium": {"count": 2, "share": pytest.approx(2 / 11)},
        "frontier": {"count": 1, "share": pytest.approx(1 / 11)},
    }
    assert list(report["routed_distribution"]) == ["small", "medium", "frontier"]
    # final: small p0-p3; medium p8; frontier p4-p7. p9 failed, p10 is pending.
    assert report["final_distribution"] == {
        "small": {"count": 4, "share": pytest.approx(4 / 11)},
        "medium": {"count": 1, "share": pytest.approx(1 / 11)},
        "frontier": {"count": 4, "share": pytest.approx(4 / 11)},
    }


def test_fallback_rate_reasons_and_paths(report: dict[str, Any]) -> None:
    # p4, p5, p6, p9 fell back, out of the 10 finished prompts (p10 is pending).
    assert report["fallbacks"] == {
        "prompts_fell_back": 4,
        "finished_prompts": 10,
        "rate": pytest.approx(0.4),
        "target": SAVINGS_FALLBACK_TARGET,
        "above_target": True,
        "events": 5,
        "by_reason": {"error": 2, "low_confidence": 2, "timeout": 1},
        # small→frontier: p4, p5; medium→frontier: p6, p9; small→medium: p9.
        "by_path": {"medium→frontier": 2, "small→frontier": 2, "small→medium": 1},
    }
    # Most frequent first, ties by name.
    assert list(report["fallbacks"]["by_reason"]) == ["error", "low_confidence", "timeout"]
    assert list(report["fallbacks"]["by_path"])[-1] == "small→medium"


def test_answer_latency_percentiles_are_nearest_rank(report: dict[str, Any]) -> None:
    # small: 100 110 120 130 140 150 160 → p50 rank ceil(3.5)=4, p95 rank ceil(6.65)=7.
    # medium: 250 300 400 → p50 rank 2, p95 rank 3 (interpolation would not give 300 / 400).
    # frontier: 900 1000 1100 1200 3000 → p50 rank 3, p95 rank ceil(4.75)=5.
    # Route calls (20 ms) are not answers and are left out.
    assert report["latency_ms"] == {
        "small": {"calls": 7, "p50": 130.0, "p95": 160.0, "max": 160.0},
        "medium": {"calls": 3, "p50": 300.0, "p95": 400.0, "max": 400.0},
        "frontier": {"calls": 5, "p50": 1100.0, "p95": 3000.0, "max": 3000.0},
    }


def test_tokens_and_cost_per_tier_include_route_calls(report: dict[str, Any]) -> None:
    # small answers: 4 * 100/50 + 2 * 200/100 = 800/400 → (800*0.1 + 400*0.2)/1000 = $0.16;
    # route calls: 11 * 40/2 = 440/22 → (440*0.1 + 22*0.2)/1000 = $0.0484.
    # medium: 100/50 → (100*0.3 + 50*0.6)/1000 = $0.06.
    # frontier: 200/100 + 200/100 + 300/150 + 400/200 = 1100/550 → (5500 + 5500)/1000 = $11.
    assert report["tokens_and_cost"] == {
        "small": {
            "calls": 18,
            "prompt_tokens": 1240,
            "completion_tokens": 422,
            "cost_usd": pytest.approx(0.2084),
        },
        "medium": {
            "calls": 3,
            "prompt_tokens": 100,
            "completion_tokens": 50,
            "cost_usd": pytest.approx(0.06),
        },
        "frontier": {
            "calls": 5,
            "prompt_tokens": 1100,
            "completion_tokens": 550,
            "cost_usd": pytest.approx(11.0),
        },
    }
    assert report["route_calls"] == {
        "calls": 11,
        "prompt_tokens": 440,
        "completion_tokens": 22,
        "cost_usd": pytest.approx(0.0484),
    }


def test_routed_cost_against_all_frontier(report: dict[str, Any]) -> None:
    # Final answers of the 9 succeeded prompts: p0-p3 small 4 * 100/50, p4-p5 frontier
    # 2 * 200/100, p6 300/150, p7 400/200, p8 medium 100/50 = 1600/800 tokens; p4-p5's
    # low-confidence small answers are not final. On frontier: (1600*5 + 800*10)/1000 = $16.
    routed = 0.2084 + 0.06 + 11.0
    assert report["cost"] == {
        "routed_usd": pytest.approx(routed),
        "all_frontier_usd": pytest.approx(16.0),
        "savings_usd": pytest.approx(16.0 - routed),
        "savings_pct": pytest.approx((1 - routed / 16.0) * 100, abs=1e-4),  # 29.5725 %
        "times_cheaper": pytest.approx(16.0 / routed, abs=1e-4),  # 1.4199*
        "frontier_tier": "frontier",
    }


def test_router_latency(report: dict[str, Any]) -> None:
    # 10, 20, … 110 ms: p50 rank ceil(5.5)=6 → 60, p95 rank ceil(10.45)=11 → 110.
    assert report["router_latency_ms"] == {"count": 11, "p50": 60.0, "p95": 110.0, "max": 110.0}


def test_report_is_plain_json(report: dict[str, Any]) -> None:
    assert json.loads(json.dumps(report))["cost"]["frontier_tier"] == "frontier"


def test_job_without_attempts_divides_by_nothing(engine: Engine, tmp_path: Path) -> None:
    with session_scope(engine) as session:
        job = Job(name="empty", mode=JobMode.ROUTE, router="rules")
        session.add(job)
        session.flush()
        assert job.id is not None
        job_id = job.id
    with Session(engine) as session:
        report = build_report(session, job_id, tiers=TIERS)
    zero = {"count": 0, "share": 0.0}
    assert report["prompts"] == 0
    assert report["routed_distribution"] == {t: zero for t in TIERS}
    assert report["final_distribution"] == {t: zero for t in TIERS}
    assert report["fallbacks"]["rate"] is None
    assert report["fallbacks"]["above_target"] is False
    assert report["fallbacks"]["events"] == 0
    assert report["latency_ms"] == {t: None for t in TIERS}
    assert report["route_calls"] is None
    assert report["router_latency_ms"] is None
    assert report["cost"] == {
        "routed_usd": 0.0,
        "all_frontier_usd": 0.0,
        "savings_usd": 0.0,
        "savings_pct": None,
        "times_cheaper": None,
        "frontier_tier": "frontier",
    }
    json.dumps(report)
    # Printing and plotting cope with all the gaps too.
    assert "no finished prompts yet" in _render(report)
    assert plot_report(report, tmp_path / "empty.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_tier_the_config_no_longer_names_is_still_reported(engine: Engine) -> None:
    with session_scope(engine) as session:
        job_id = _insert_scenario(session)
    with Session(engine) as session:
        report = build_report(session, job_id, tiers={"frontier": TIERS["frontier"]})
    assert list(report["tokens_and_cost"]) == ["frontier", "medium", "small"]
    assert report["routed_distribution"]["small"]["count"] == 8
    assert report["latency_ms"]["medium"]["calls"] == 3


def _render(report: dict[str, Any]) -> str:
    console = Console(record=True, width=160)
    print_report(console, report)
    return console.export_text()


def test_print_report_shows_the_key_numbers(report: dict[str, Any]) -> None:
    text = _render(report)
    for expected in (
        "job",
        "router llm",
        "8 (72.7 %)",  # routed small
        "1,100",  # frontier p50 ms
        "3,000",  # frontier p95 / max ms
        "fallback rate 40.0 %",
        "above the 15 % target",
        "low_confidence 2",
        "small→frontier 2",
        "$11.2684",  # routed
        "$16.0000",  # all on frontier
        "29.6 %",  # savings
        f"1.42{TIMES}",  # cheaper
        "p50 60 ms",  # router latency
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"


def test_plot_report_writes_a_png(report: dict[str, Any], tmp_path: Path) -> None:
    path = plot_report(report, tmp_path / "plots" / "report.png")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000  # three panels of bars, not an empty canvas
