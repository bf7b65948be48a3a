"""Unit tests of the pure pieces: confidence, cost, retries, the reducer's filters, the
fine-tuning format check, job parameters and settings errors."""

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from workers.completion import CallError
from workers.confidence import confidence, geometric_mean, seed_formula
from workers.cost import cost_usd
from workers.finetune_format import check_example, check_file
from workers.reducer import Filters, Row, build_example, in_validation
from workers.request import build_request, next_tier
from workers.retry import RetryPolicy, call_with_retries
from workers.settings import ConfigError, ReducerConfig, TierConfig, load_settings


def test_geometric_mean_is_the_mean_token_probability() -> None:
    logprobs = [math.log(0.9), math.log(0.5), math.log(0.8)]
    assert geometric_mean(logprobs) == pytest.approx((0.9 * 0.5 * 0.8) ** (1 / 3))
    assert seed_formula([-0.1, -0.3]) == pytest.approx(0.8)
    assert seed_formula([-5.0]) == 0.0


def test_missing_logprobs_give_the_configured_unknown() -> None:
    assert confidence(None, method="geometric_mean", unknown=0.5) == 0.5
    assert confidence([], method="seed", unknown=0.3) == 0.3


def test_cost_uses_tier_prices() -> None:
    tier = TierConfig(base_url="http://x/v1", model="m", input_per_1k=0.5, output_per_1k=1.5)  # type: ignore[arg-type]
    assert cost_usd(tier, 1000, 2000) == pytest.approx(3.5)


def failing(n: int, **kw: object) -> object:
    calls = {"n": 0}

    async def call() -> str:
        calls["n"] += 1
        if calls["n"] <= n:
            raise CallError("boom", status="error", latency_ms=1.0, **kw)  # type: ignore[arg-type]
        return "ok"

    return call


def recording(sleeps: list[float]) -> Any:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return sleep


def retried(call: Any, policy: RetryPolicy, **kw: Any) -> Any:
    kw.setdefault("sleep", recording([]))
    return asyncio.run(call_with_retries(call, policy, **kw))


def test_retries_until_success_and_reports_each_failure() -> None:
    failures: list[CallError] = []
    sleeps: list[float] = []
    result = retried(
        failing(3),
        RetryPolicy(max_retries=5, base_s=0.1),
        on_failure=failures.append,
        sleep=recording(sleeps),
    )
    assert result == "ok" and len(failures) == 3 and len(sleeps) == 3


def test_retry_after_is_honoured_and_capped() -> None:
    sleeps: list[float] = []
    retried(
        failing(2, retry_after=7.0),
        RetryPolicy(max_retries=3, base_s=0.1, max_s=5.0),
        on_failure=lambda e: None,
        sleep=recording(sleeps),
    )
    assert all(5.0 <= s <= 5.1 for s in sleeps)


def test_gives_up_after_last_retry_and_on_non_retryable() -> None:
    with pytest.raises(CallError):
        retried(failing(9), RetryPolicy(max_retries=2), on_failure=lambda e: None)
    seen: list[CallError] = []
    with pytest.raises(CallError):
        retried(failing(1, retryable=False), RetryPolicy(max_retries=5), on_failure=seen.append)
    assert len(seen) == 1


def row(response: str | None, status: str = "succeeded", idx: int = 0) -> Row:
    return Row(idx, status, [{"role": "user", "content": f"question {idx}"}], response)


def test_reducer_filters() -> None:
    filters = Filters(ReducerConfig(min_length=10, max_example_tokens=50))
    long_answer = "A fine answer, long enough."

    def reason(r: Row) -> str | None:
        return filters.reject_reason(r, build_example(r, None))

    assert reason(row(None, "failed")) == "no_answer"
    assert reason(row("I'm sorry, I can't do that")) == "refusal"
    assert reason(row("short")) == "too_short"
    assert reason(row("word " * 300)) == "too_long"
    assert reason(row(long_answer)) is None
    assert reason(row(long_answer)) == "duplicate"
    assert reason(row(long_answer, idx=1)) is None  # another question: not a duplicate


def test_example_carries_system_prompt_unless_the_prompt_has_one() -> None:
    example = build_example(row("answer"), "Be brief.")
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    own = Row(
        0,
        "succeeded",
        [{"role": "developer", "content": "x"}, {"role": "user", "content": "q"}],
        "a",
    )
    assert [m["role"] for m in build_example(own, "Be brief.")["messages"]] == [
        "system",
        "user",
        "assistant",
    ]


def test_validation_split_is_deterministic_and_near_the_fraction() -> None:
    picks = [in_validation(7, i, 0.1) for i in range(10_000)]
    assert picks == [in_validation(7, i, 0.1) for i in range(10_000)]
    assert 0.08 < sum(picks) / len(picks) < 0.12


def test_finetune_format_rules(tmp_path: Path) -> None:
    assert check_example({"messages": [{"role": "user", "content": "q"}]}) == "no assistant message"
    assert "unexpected keys" in str(check_example({"messages": [], "extra": 1}))
    assert "invalid message" in str(check_example({"messages": [{"role": "tool", "content": "x"}]}))
    path = tmp_path / "t.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path.write_text(json.dumps(good) + "\n")
    report = check_file(path)
    assert report.errors == [] and report.examples == 1 and "at least 10" in report.warnings[0]


def test_request_building_and_escalation_chain() -> None:
    request = build_request(
        {"system_prompt": "S", "temperature": 0.2, "logprobs": True},
        [{"role": "user", "content": "q"}],
    )
    assert request["messages"][0] == {"role": "system", "content": "S"} and request["logprobs"]
    params = {"tiers": ["small", "medium", "frontier"], "fallback": ["medium", "frontier"]}
    assert next_tier(params, "small") == "medium"
    assert next_tier(params, "medium") == "frontier"
    assert next_tier(params, "frontier") is None
    assert (
        next_tier({"tiers": ["small", "medium", "frontier"], "fallback": ["frontier"]}, "small")
        == "frontier"
    )


def test_settings_errors_name_the_place(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[tiers.a]\nbase_url = "http://x/v1"\nmodel = "m"\n[teacher]\ntier = "a"\n'
        '[router]\nfallback = ["zzz"]\n'
    )
    with pytest.raises(ConfigError, match=r"unknown tier 'zzz' in \[router\] fallback"):
        load_settings(path)
    path.write_text(
        '[tiers.a]\nbase_url = "http://x/v1"\nmodel = "m"\ncolour = "red"\n[teacher]\ntier = "a"\n'
    )
    with pytest.raises(ConfigError, match=r"tiers\.a\.colour"):
        load_settings(path)
