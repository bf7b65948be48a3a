"""`cost estimate` and `cost simulate`: the seed's savings example to the cent, and per-strategy
costs of a generated traffic log, a length-only log and a job in SQLite, computed by hand.
The llm strategy asks the simulator over real HTTP."""

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from models import (
    Attempt,
    AttemptPurpose,
    AttemptStatus,
    Job,
    JobMode,
    JobStatus,
    Prompt,
    PromptStatus,
)
from producer.costs import estimate
from tests.helpers.analysis import (
    ANALYSIS,
    CODE,
    EASY,
    EXAMPLE_CONFIG,
    PRICES,
    priced_config,
    run,
    run_json,
)
from tests.helpers.services import make_engine
from workers.errors import ExitCode
from workers.settings import Settings

TIMES = "\u00d7"  # the multiplication sign the CLI prints after "7.9"


def by_hand(tier: str, prompt_tokens: int, completion_tokens: int) -> float:
    price_in, price_out = PRICES[tier]
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1000


def strategies(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["strategy"]: entry for entry in data["strategies"]}


# --- estimate ----------------------------------------------------------------------------


def test_estimate_reproduces_the_seed() -> None:
    # the default tiers are the seed's: small 0.10, medium 0.30, frontier 5.00 per 1K
    data = estimate(Settings().tiers, requests=100_000, mix=[0.7, 0.2, 0.1], avg_tokens=500)
    assert data["all_frontier_usd"] == 250_000
    assert data["routed_usd"] == 31_500
    assert data["savings_usd"] == 218_500
    assert round(data["savings_pct"]) == 87 and data["savings_pct"] == pytest.approx(87.4)
    assert round(data["times_cheaper"], 1) == 7.9
    assert [line["cost_usd"] for line in data["tiers"]] == [3_500, 3_000, 25_000]


def test_estimate_command_prints_the_seed_figures(use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    args = ("cost", "estimate", "--requests", "100000", "--mix", "0.7,0.2,0.1")
    result = run(*args, "--avg-tokens", "500")
    assert result.exit_code == 0, result.output
    for figure in ("$250,000", "$31,500", "$218,500", "87 %", f"7.9{TIMES}"):
        assert figure in result.output
    data = run_json(*args, "--avg-tokens", "500")
    assert (data["all_frontier_usd"], data["routed_usd"]) == (250_000, 31_500)
    assert (round(data["savings_pct"]), round(data["times_cheaper"], 1)) == (87, 7.9)


def test_estimate_prices_prompt_and_completion_tokens_apart(
    tmp_path: Path, use_config: Any
) -> None:
    use_config(priced_config(tmp_path / "d.toml", base_url="http://127.0.0.1:9/v1"))
    data = run_json(
        "cost", "estimate", "--requests", "1000", "--mix", "0.5,0.5,0",
        "--avg-tokens", "400", "--output-share", "0.25",
    )  # fmt: skip
    # 300 prompt + 100 completion tokens a request
    small, medium, frontier = (by_hand(t, 300, 100) for t in PRICES)
    assert data["routed_usd"] == pytest.approx(500 * small + 500 * medium)
    assert data["all_frontier_usd"] == pytest.approx(1000 * frontier)


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ("0.7,0.3", "--mix has 2 share(s) but 3 tiers are configured (small, medium, frontier)"),
        ("0.7,0.2,0.2", "must sum to 1"),
        ("0.7,x,0.1", "expected numbers separated by commas"),
        ("1.5,-0.5,0", "between 0 and 1"),
    ],
)
def test_estimate_refuses_a_bad_mix(use_config: Any, mix: str, message: str) -> None:
    use_config(EXAMPLE_CONFIG)
    result = run("cost", "estimate", "--requests", "10", "--mix", mix, "--avg-tokens", "500")
    assert result.exit_code == ExitCode.USAGE
    assert message in result.output and "Traceback" not in result.output


# --- simulate: a traffic log -------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


LOG_ROWS = [
    {"prompt": EASY, "prompt_tokens": 100, "completion_tokens": 50, "category": "facts"},
    {"prompt": CODE, "prompt_tokens": 200, "completion_tokens": 300, "category": "coding"},
    {"prompt": ANALYSIS, "prompt_tokens": 400, "completion_tokens": 100, "category": "facts"},
]
ROUTED_BY_RULES = ("small", "frontier", "medium")


def test_simulate_a_log_gives_the_hand_computed_costs(
    tmp_path: Path, use_config: Any, sim: Any
) -> None:
    use_config(priced_config(tmp_path / "d.toml", base_url=sim.base_url))
    log = write_jsonl(tmp_path / "traffic.jsonl", LOG_ROWS)
    data = run_json(
        "cost", "simulate", str(log), "--strategies", "all-frontier,rules,llm,cascade",
        "--monthly-requests", "3000", "--fallback-rate", "0.2",
    )  # fmt: skip
    sizes = [(r["prompt_tokens"], r["completion_tokens"]) for r in LOG_ROWS]
    frontier = sum(by_hand("frontier", *size) for size in sizes)
    rules = sum(by_hand(t, *size) for t, size in zip(ROUTED_BY_RULES, sizes, strict=True))
    cascade = sum(by_hand("small", *size) for size in sizes) + 0.2 * frontier
    got = strategies(data)
    scale = 3000 / 3
    assert got["all-frontier"]["monthly_usd"] == pytest.approx(frontier * scale)
    assert got["rules"]["monthly_usd"] == pytest.approx(rules * scale)
    assert got["rules"]["savings_usd"] == pytest.approx((frontier - rules) * scale)
    assert got["rules"]["savings_pct"] == pytest.approx((1 - rules / frontier) * 100, abs=1e-4)
    assert got["cascade"]["monthly_usd"] == pytest.approx(cascade * scale)
    assert got["cascade"]["calls_per_request"] == {"small": 1.0, "frontier": 0.2}
    # the simulator answers EASY / HARD for the markers and MEDIUM for the analysis question,
    # so the llm router routes as the rules do, and pays for its own calls on the small tier
    llm = got["llm"]
    assert llm["calls_per_request"] == pytest.approx({t: 1 / 3 for t in ROUTED_BY_RULES})
    assert llm["router_monthly_usd"] > 0
    assert llm["monthly_usd"] == pytest.approx(rules * scale + llm["router_monthly_usd"])
    assert sim.stats()["by_model"]["sim-small"]["requests"] == 4  # a trial call, then 3
    costs = data["by_category"]
    assert costs["coding"]["monthly_usd"]["rules"] == pytest.approx(
        by_hand("frontier", 200, 300) * scale
    )
    assert data["skipped"] == []


def test_simulate_skips_an_unreachable_llm_router_with_a_note(
    tmp_path: Path, use_config: Any
) -> None:
    use_config(priced_config(tmp_path / "d.toml", base_url="http://127.0.0.1:9/v1"))
    log = write_jsonl(tmp_path / "traffic.jsonl", LOG_ROWS)
    args = ("cost", "simulate", str(log), "--strategies", "rules,llm", "--monthly-requests", "9")
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "skipped llm:" in result.output and "did not answer" in result.output
    assert [s["strategy"] for s in run_json(*args)["strategies"]] == ["all-frontier", "rules"]


def test_simulate_a_length_only_csv(tmp_path: Path, use_config: Any) -> None:
    use_config(priced_config(tmp_path / "d.toml", base_url="http://127.0.0.1:9/v1"))
    log = tmp_path / "lengths.csv"
    log.write_text("prompt_length,completion_tokens\n400,\n41,20\n", encoding="utf-8")
    data = run_json(
        "cost", "simulate", str(log), "--strategies", "rules,cascade", "--monthly-requests", "2",
    )  # fmt: skip
    # lengths are characters: 400 → 100 tokens, 41 → 11; no completion_tokens: as many as
    # the prompt
    sizes = [(100, 100), (11, 20)]
    frontier = sum(by_hand("frontier", *size) for size in sizes)
    cascade = sum(by_hand("small", *size) for size in sizes) + 0.15 * frontier  # the default
    got = strategies(data)
    assert got["all-frontier"]["monthly_usd"] == pytest.approx(frontier)
    assert got["cascade"]["monthly_usd"] == pytest.approx(cascade)
    assert data["skipped"][0]["strategy"] == "rules"
    assert "no prompt text" in data["skipped"][0]["reason"]


def test_simulate_reports_every_bad_row(tmp_path: Path, use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    log = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": "fine"}, {"text": "no prompt"}, {"prompt": "x", "prompt_tokens": -3}],
    )
    result = run("cost", "simulate", str(log), "--monthly-requests", "10")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "2 bad row(s)" in result.output
    assert (
        "line 2: needs a 'prompt'" in result.output and "line 3: 'prompt_tokens'" in result.output
    )


def test_simulate_needs_a_log_or_a_job(use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    result = run("cost", "simulate", "--monthly-requests", "10")
    assert result.exit_code == ExitCode.USAGE and "LOG" in result.output
    result = run("cost", "simulate", "x.jsonl", "--strategies", "magic", "--monthly-requests", "1")
    assert result.exit_code == ExitCode.USAGE and "unknown strategy magic" in result.output


def test_simulate_draws_a_bar_chart(tmp_path: Path, use_config: Any) -> None:
    use_config(priced_config(tmp_path / "d.toml", base_url="http://127.0.0.1:9/v1"))
    log = write_jsonl(tmp_path / "traffic.jsonl", LOG_ROWS)
    plot = tmp_path / "plots" / "cost.png"
    result = run(
        "cost", "simulate", str(log), "--strategies", "rules,cascade",
        "--monthly-requests", "100", "--plot", str(plot),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert plot.read_bytes().startswith(b"\x89PNG")


# --- simulate: a finished job ------------------------------------------------------------


def answer(tier: str, prompt_tokens: int, completion_tokens: int, **fields: Any) -> Attempt:
    return Attempt(
        prompt_id=0,  # set when added to its prompt
        tier=tier,
        model=f"sim-{tier}",
        status=fields.pop("status", AttemptStatus.OK),
        latency_ms=10.0,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        **fields,
    )


def store_job(url: str) -> int:
    """A routed job of four prompts: one answered on small, one escalated small → frontier,
    one answered on medium after a router call, one failed."""
    engine = make_engine(url)
    plan: list[tuple[str, PromptStatus, str | None, bool, list[Attempt]]] = [
        (EASY, PromptStatus.SUCCEEDED, "small", False, [answer("small", 100, 50)]),
        (CODE, PromptStatus.SUCCEEDED, "frontier", True, [
            answer("small", 200, 280),  # low confidence: escalated
            answer("frontier", 200, 300),
        ]),
        (ANALYSIS, PromptStatus.SUCCEEDED, "medium", False, [
            answer("small", 60, 1, purpose=AttemptPurpose.ROUTE),
            answer("medium", 400, 90, status=AttemptStatus.TIMEOUT),  # a retried call
            answer("medium", 400, 100),
        ]),
        ("Lost to errors", PromptStatus.FAILED, None, False, [
            answer("small", 0, 0, status=AttemptStatus.ERROR),
        ]),
    ]  # fmt: skip
    with Session(engine) as session:
        job = Job(mode=JobMode.ROUTE, status=JobStatus.FINISHED, router="rules", total=4)
        session.add(job)
        session.flush()
        assert job.id is not None
        for idx, (text, status, final, fell_back, attempts) in enumerate(plan):
            prompt = Prompt(
                job_id=job.id,
                idx=idx,
                messages=[{"role": "user", "content": text}],
                meta={"category": "coding" if text == CODE else "other"},
                status=status,
                final_tier=final,
                fell_back=fell_back,
            )
            session.add(prompt)
            session.flush()
            for attempt in attempts:
                attempt.prompt_id = prompt.id  # type: ignore[assignment]
                session.add(attempt)
        session.commit()
        return job.id


def test_simulate_a_job_uses_its_final_answers_and_fallback_rate(
    tmp_path: Path, use_config: Any, database_url: str
) -> None:
    url = database_url  # SQLite and PostgreSQL
    use_config(
        priced_config(tmp_path / "d.toml", base_url="http://127.0.0.1:9/v1", database_url=url)
    )
    job_id = store_job(url)
    data = run_json(
        "cost", "simulate", "--job", str(job_id), "--strategies", "rules,cascade",
        "--monthly-requests", "300",
    )  # fmt: skip
    # the three answered prompts, sized by their final answer calls; 1 of 4 finished fell back
    sizes = [(100, 50), (200, 300), (400, 100)]
    frontier = sum(by_hand("frontier", *size) for size in sizes)
    rules = sum(by_hand(t, *size) for t, size in zip(ROUTED_BY_RULES, sizes, strict=True))
    cascade = sum(by_hand("small", *size) for size in sizes) + 0.25 * frontier
    got = strategies(data)
    assert data["requests"] == 3 and data["fallback_rate"] == 0.25
    assert got["all-frontier"]["monthly_usd"] == pytest.approx(frontier * 100)
    assert got["rules"]["monthly_usd"] == pytest.approx(rules * 100)
    assert got["cascade"]["monthly_usd"] == pytest.approx(cascade * 100)
    assert set(data["by_category"]) == {"coding", "other"}
    # an explicit --fallback-rate wins over the job's
    data = run_json(
        "cost", "simulate", "--job", str(job_id), "--strategies", "cascade",
        "--monthly-requests", "300", "--fallback-rate", "0",
    )  # fmt: skip
    small = sum(by_hand("small", *size) for size in sizes)
    assert strategies(data)["cascade"]["monthly_usd"] == pytest.approx(small * 100)


def test_simulate_an_unknown_job(tmp_path: Path, use_config: Any) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    use_config(
        priced_config(tmp_path / "d.toml", base_url="http://127.0.0.1:9/v1", database_url=url)
    )
    result = run("cost", "simulate", "--job", "42", "--monthly-requests", "10")
    assert result.exit_code == ExitCode.NOT_FOUND and "job 42 not found" in result.output
