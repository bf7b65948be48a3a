"""Budget caps (`--max-cost`): the reservation rule against real Redis, and whole jobs against
the simulator over real HTTP with real worker processes, SQLite and PostgreSQL — concurrent
workers never start a call that could pass the cap, the rest ends cancelled (reason budget),
a re-run answers the part that was paid for from the cache, and a Redis flushed mid-job
re-reads the spend from the ledger instead of starting again from zero."""

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from models import AttemptStatus, JobStatus, PromptStatus
from producer.cli import main
from tests.helpers.faults import fault_config, resume, start_workers, submit_prompts
from tests.helpers.pipeline import attempts_of, prompts_of, wait_for_job
from tests.helpers.services import TEST_REDIS_URL
from workers.budget import BudgetSpent, Cap, RedisBudgets, call_cost_estimate
from workers.chat import ChatRequest
from workers.settings import load_settings

MAX_TOKENS = 20
CAP_USD = 2.0  # about ten calls of ~0.2 USD on the test frontier tier (5 USD per 1K tokens)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def budgets_for(spent_in_ledger: dict[str, float]) -> RedisBudgets:
    import redis.asyncio

    async def ledger(job_id: int) -> dict[str, float]:
        return spent_in_ledger

    return RedisBudgets(redis.asyncio.Redis.from_url(TEST_REDIS_URL), ledger)


HOLD_S = 60.0


def test_reserve_refuses_waits_and_settles(clean_redis: Any) -> None:
    async def scenario() -> None:
        budgets = await budgets_for({"all": 0.0})
        caps = [Cap("all", 1.0)]
        first = await budgets.reserve(1, caps, 0.6, HOLD_S)
        # 0.6 + 0.6 > 1 even if the first came back free: it could pass the cap, so no wait.
        with pytest.raises(BudgetSpent, match="budget: the job's cap of \\$1 is spent"):
            await budgets.reserve(1, caps, 1.2, HOLD_S)
        await budgets.check(1, caps, 0.5)  # could fit: the check does not wait or reserve
        waiting = asyncio.ensure_future(budgets.reserve(1, caps, 0.5, HOLD_S))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await budgets.settle(first, 0.3)  # cheaper than reserved
        second = await asyncio.wait_for(waiting, 5)
        await budgets.settle(second, 0.5)
        assert await budgets.spent(1, caps[0]) == pytest.approx(0.8)
        with pytest.raises(BudgetSpent):
            await budgets.check(1, caps, 0.25)
        await budgets.close()

    run(scenario())


def test_a_reservation_never_settled_expires(clean_redis: Any) -> None:
    """A worker killed between reserve and settle: its hold is released by itself."""

    async def scenario() -> None:
        budgets = await budgets_for({"all": 0.0})
        caps = [Cap("all", 1.0)]
        await budgets.reserve(4, caps, 0.9, 0.3)  # never settled
        started = time.monotonic()
        hold = await asyncio.wait_for(budgets.reserve(4, caps, 0.9, HOLD_S), 10)
        assert time.monotonic() - started >= 0.2
        await budgets.settle(hold, 0.9)
        assert await budgets.spent(4, caps[0]) == pytest.approx(0.9)
        await budgets.close()

    run(scenario())


def test_a_tier_cap_and_the_job_cap_both_hold(clean_redis: Any) -> None:
    async def scenario() -> None:
        budgets = await budgets_for({"all": 0.0})
        caps = [Cap("all", 10.0), Cap("tier:frontier", 1.0)]
        hold = await budgets.reserve(2, caps, 0.9, HOLD_S)
        await budgets.settle(hold, 0.9)
        with pytest.raises(BudgetSpent, match="tier 'frontier'"):
            await budgets.reserve(2, caps, 0.2, HOLD_S)
        assert await budgets.spent(2, Cap("all", 10.0)) == pytest.approx(0.9)
        await budgets.close()

    run(scenario())


def test_flushed_budget_is_read_again_from_the_ledger(clean_redis: Any) -> None:
    async def scenario() -> None:
        ledger = {"all": 0.0}
        budgets = await budgets_for(ledger)
        caps = [Cap("all", 1.0)]
        before = await budgets.reserve(3, caps, 0.4, HOLD_S)
        clean_redis.flushdb()
        ledger["all"] = 0.5  # what the committed attempts say
        after = await budgets.reserve(3, caps, 0.3, HOLD_S)  # seeded: 0.5 spent
        assert await budgets.spent(3, caps[0]) == pytest.approx(0.5)
        # The call reserved before the flush comes back: its cost counts, and it does not
        # release what the new budget holds for the others.
        await budgets.settle(before, 0.1)
        assert await budgets.spent(3, caps[0]) == pytest.approx(0.6)
        with pytest.raises(BudgetSpent):  # 0.6 spent + 0.45 could pass 1.0
            await budgets.check(3, caps, 0.45)
        waiting = asyncio.ensure_future(budgets.reserve(3, caps, 0.2, HOLD_S))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # 0.6 + 0.3 held + 0.2 > 1: still held for `after`
        await budgets.settle(after, 0.2)
        await budgets.settle(await asyncio.wait_for(waiting, 5), 0.2)
        assert await budgets.spent(3, caps[0]) == pytest.approx(1.0)
        await budgets.close()

    run(scenario())


def budget_config(tmp_path: Path, sim: Any, database_url: str) -> Path:
    return fault_config(tmp_path, sim, database_url)


def upper_estimate(config: Path, rows: list[str]) -> float:
    """The largest estimate of one call among the job's prompts (an upper bound: max_tokens
    set, and the simulator bills prompts with the same rule as the chars counter)."""
    settings = load_settings(config)
    tier = settings.require_tier("frontier")
    system = settings.teacher.system_prompt
    return max(
        call_cost_estimate(
            tier,
            ChatRequest(
                [{"role": "system", "content": system}, {"role": "user", "content": row}],
                max_tokens=MAX_TOKENS,
            ),
        )
        for row in rows
    )


def spent(engine: Any, job_id: int) -> float:
    return sum(a.cost_usd for a in attempts_of(engine, job_id))


def test_concurrent_workers_stop_at_the_cap_and_the_rest_is_cancelled(
    tmp_path: Path, sim: Any, database_url: str, workers: Any
) -> None:
    config = budget_config(tmp_path, sim, database_url)
    start_workers(workers, config, 2)
    overrides = {"max_tokens": MAX_TOKENS, "max_cost_usd": CAP_USD}
    job_id, engine = submit_prompts(tmp_path, config, 60, overrides=overrides)
    job = wait_for_job(engine, job_id, workers)
    assert job.status == JobStatus.FINISHED  # every prompt is terminal: answered or stopped
    estimate = upper_estimate(config, [f"Explain idea {n} to a student." for n in range(60)])
    total = spent(engine, job_id)
    assert CAP_USD - estimate < total <= CAP_USD  # as close as a call's bound allows, never past
    prompts = prompts_of(engine, job_id)
    cancelled = [p for p in prompts if p.status == PromptStatus.CANCELLED]
    assert cancelled and job.cancelled == len(cancelled)
    assert job.completed + job.cancelled == 60
    assert all(p.error and p.error.startswith("budget:") for p in cancelled)
    called = {a.prompt_id for a in attempts_of(engine, job_id)}
    assert not called & {p.id for p in cancelled}  # no call for a stopped prompt

    status = json.loads(cli(config, "status", str(job_id), "--json"))
    assert status["budget"]["max_cost_usd"] == CAP_USD
    assert status["budget"]["spent_usd"] == pytest.approx(total)
    assert status["budget"]["cancelled"] == len(cancelled)
    text = cli(config, "report", str(job_id))
    assert f"cancelled: budget: {len(cancelled)} prompts" in text and "budget: $" in text

    # Re-run the half-finished job's file without a cap: what was paid for comes from the
    # cache, only the cancelled part is called.
    calls = sim.stats()["requests"]
    again, _ = submit_prompts(tmp_path, config, 60, overrides={"max_tokens": MAX_TOKENS})
    rerun = wait_for_job(engine, again, workers)
    assert rerun.completed == 60
    assert sim.stats()["requests"] - calls == len(cancelled)
    hits = [a for a in attempts_of(engine, again) if a.status == AttemptStatus.CACHED]
    assert len(hits) == job.completed


def test_zero_or_negative_max_cost_is_refused(tmp_path: Path, sim: Any, sqlite_url: str) -> None:
    config = budget_config(tmp_path, sim, sqlite_url)
    source = tmp_path / "p.jsonl"
    source.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    for value in ("0", "-5", "nan"):
        result = invoke(config, "submit", str(source), "--max-cost", value, "--json")
        assert result.exit_code == 2, result.output
        assert "--max-cost must be more than 0 USD" in result.output
    assert "no jobs yet" in cli(config, "jobs")
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text() + "\n[teacher]\nmax_cost_usd = -1\n", encoding="utf-8")
    result = invoke(bad, "submit", str(source), "--dry-run")
    assert result.exit_code != 0 and "teacher.max_cost_usd" in result.output


@pytest.mark.slow
def test_redis_flushed_mid_job_keeps_the_spend(
    tmp_path: Path, slow_sim: Any, database_url: str, workers: Any, clean_redis: Any
) -> None:
    """FLUSHDB mid-job loses the queues and the budget. `resume` re-sends what is left; the
    budget is re-read from the ledger, so the job does not get its whole cap again: it ends
    past the cap by at most the calls that were in flight at the flush."""
    config = fault_config(tmp_path, slow_sim, database_url, extra="[recovery]\nenabled = false\n")
    start_workers(workers, config, 1)  # 4 calls in flight
    cap = 4.0  # about twenty calls
    overrides = {"max_tokens": MAX_TOKENS, "max_cost_usd": cap}
    job_id, engine = submit_prompts(tmp_path, config, 60, overrides=overrides)
    deadline = time.monotonic() + 60
    while len(attempts_of(engine, job_id)) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    clean_redis.flushdb()
    settled = -1
    while settled != len(attempts_of(engine, job_id)):  # the in-flight calls end
        settled = len(attempts_of(engine, job_id))
        time.sleep(1.0)
    resume(config, job_id)
    wait_for_job(engine, job_id, workers)
    estimate = upper_estimate(config, [f"Explain idea {n} to a student." for n in range(60)])
    in_flight = 4
    total = spent(engine, job_id)
    # Starting again from zero would have spent about 10 calls more than the cap.
    assert total <= cap + in_flight * estimate
    assert prompts_of(engine, job_id)[-1].status == PromptStatus.CANCELLED


def invoke(config: Path, *args: str) -> Any:
    from workers.settings import get_settings

    get_settings.cache_clear()
    try:
        return CliRunner().invoke(main, list(args), env={"DISTILLERY_CONFIG": str(config)})
    finally:
        get_settings.cache_clear()


def cli(config: Path, *args: str) -> str:
    result = invoke(config, *args)
    assert result.exit_code == 0, result.output
    return str(result.output)
