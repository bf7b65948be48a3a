"""Global per-tier rate limits: each scenario once, run against both backends (the Redis
script on real Redis, and the in-process limiter), the rule itself on a fake clock, and three
real worker processes against a simulator enforcing the same limit."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import pytest

from models import AttemptStatus, JobStatus
from simulator import ModelBehaviour, SimConfig, start_in_thread
from tests.helpers.config import write_config
from tests.helpers.pipeline import attempts_of, submit_file, wait_for_job, write_jsonl
from tests.helpers.services import TEST_REDIS_URL
from workers.ratelimit import (
    COOLDOWN_REFRESH_S,
    Limits,
    LocalRateLimiter,
    RedisRateLimiter,
)

T = TypeVar("T")
Limiter = LocalRateLimiter | RedisRateLimiter
NO_LIMITS = Limits(None, None)


def redis_limiter() -> RedisRateLimiter:
    import redis.asyncio

    return RedisRateLimiter(redis.asyncio.Redis.from_url(TEST_REDIS_URL))


@pytest.fixture(params=["redis", "local"])
def make_limiter(request: pytest.FixtureRequest) -> Callable[[], Limiter]:
    """A factory: each call is another process's limiter (sharing Redis), or, in-process,
    the same one (the embedded mode has one process)."""
    if request.param == "redis":
        request.getfixturevalue("clean_redis")
        return redis_limiter
    local = LocalRateLimiter()
    return lambda: local


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def test_grants_are_paced_across_concurrent_callers(make_limiter: Callable[[], Limiter]) -> None:
    limits = Limits(rpm=600, tpm=None)  # one call per 0.1 s

    async def scenario() -> list[float]:
        limiters = [make_limiter() for _ in range(4)]  # four callers (processes)
        grants: list[float] = []

        async def caller(limiter: Limiter) -> None:
            for _ in range(4):
                await limiter.acquire("small", limits, 1)
                grants.append(time.monotonic())

        await asyncio.gather(*(caller(limiter) for limiter in limiters))
        return sorted(grants)

    grants = run(scenario)
    assert len(grants) == 16
    assert min(b - a for a, b in pairwise(grants)) >= 0.09  # never two at once (lower bound)


def test_token_window_fills_and_reconcile_frees_it(make_limiter: Callable[[], Limiter]) -> None:
    limits = Limits(rpm=None, tpm=1000)

    async def scenario() -> None:
        limiter, other = make_limiter(), make_limiter()
        waited, ticket = await limiter.try_acquire("t", limits, 600, "a")
        assert waited == 0 and ticket
        wait, refused = await other.try_acquire("t", limits, 600, "b")
        assert refused is None and 61 < wait <= 62.01  # full until the first call ages out
        await limiter.reconcile("t", ticket, 300)  # it used fewer tokens than estimated
        assert (await other.try_acquire("t", limits, 600, "c"))[1]

    run(scenario)


def test_a_cooldown_pauses_the_tier_even_without_limits(
    make_limiter: Callable[[], Limiter],
) -> None:
    async def scenario() -> None:
        limiter, other = make_limiter(), make_limiter()
        await limiter.cooldown("t", 3)
        wait, refused = await other.try_acquire("t", NO_LIMITS, 1, "d")
        assert refused is None and 2.5 < wait <= 3.0

    run(scenario)


def test_a_limitless_tier_waits_out_any_callers_cooldown(
    make_limiter: Callable[[], Limiter],
) -> None:
    """A tier without rpm/tpm asks about its 429 cooldown at most every COOLDOWN_REFRESH_S
    per process: its own 429 pauses it at once, another process's within that time, and
    either way for the whole Retry-After."""

    async def scenario() -> tuple[float, float]:
        this, other = make_limiter(), make_limiter()
        assert await this.acquire("t", NO_LIMITS, 1) is None  # no cooldown: no wait
        await other.cooldown("t", 1.0)  # another worker got a 429 with Retry-After: 1
        cooled = time.monotonic()
        await asyncio.sleep(COOLDOWN_REFRESH_S)  # this one's view is now stale
        await this.acquire("t", NO_LIMITS, 1)
        theirs = time.monotonic() - cooled
        await this.cooldown("t", 0.5)  # its own 429
        cooled = time.monotonic()
        await this.acquire("t", NO_LIMITS, 1)
        return theirs, time.monotonic() - cooled

    theirs, own = run(scenario)
    assert theirs >= 0.95 and own >= 0.5  # the whole Retry-After, less Redis clock skew


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rule_paces_evenly_on_its_own_clock() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    limits = Limits(rpm=60, tpm=None)
    grants = []
    while len(grants) < 10:
        wait, ticket = limiter.check("small", limits, 10, f"call-{len(grants)}")
        if ticket:
            grants.append(clock.now)
        clock.now += max(wait, 0.001)
    gaps = [b - a for a, b in pairwise(grants)]
    assert len(gaps) == 9 and all(gap >= 1.0 for gap in gaps)  # 60 rpm: one a second


def test_the_rpm_window_holds_at_most_rpm_calls() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    limits = Limits(rpm=3, tpm=None)
    granted = 0
    for n in range(200):  # 200 asks over 100 s
        granted += limiter.check("t", limits, 1, f"c{n}")[1] is not None
        clock.now += 0.5
    # pacing 20 s apart allows 5 in 100 s, and never more than 3 in any 62 s window
    assert 4 <= granted <= 6


def max_in_any_window(events: list[tuple[float, float]], window: float = 60.0) -> float:
    """The largest sum of weights over any `window`-second span of (time, weight) events."""
    events = sorted(events)
    best, total, start = 0.0, 0.0, 0
    for t, weight in events:
        total += weight
        while events[start][0] <= t - window:
            total -= events[start][1]
            start += 1
        best = max(best, total)
    return best


def run_limited_job(
    tmp_path: Path, workers: Any, *, rpm: int | None, tpm: int | None, prompts: int
) -> tuple[Any, Any]:
    behaviour = ModelBehaviour(latency_ms=20, rpm=rpm, tpm=tpm)
    with start_in_thread(SimConfig(default=behaviour)) as sim:
        limits = {k: v for k, v in (("rpm", rpm), ("tpm", tpm)) if v}
        config = write_config(
            tmp_path / "distillery.toml",
            base_url=sim.base_url,
            database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
            **limits,
        )
        for _ in range(3):
            workers.start(config, concurrency=8)
        rows = [{"prompt": f"Tell me one fact about the number {i}."} for i in range(prompts)]
        job_id, engine, _ = submit_file(write_jsonl(tmp_path / "p.jsonl", rows), config)
        job = wait_for_job(engine, job_id, workers, timeout=400)
        stats = sim.stats()
    assert job.status == JobStatus.FINISHED and job.completed == prompts
    return stats, attempts_of(engine, job_id)


@pytest.mark.slow
def test_three_workers_never_exceed_rpm(tmp_path: Path, workers: Any) -> None:
    stats, attempts = run_limited_job(tmp_path, workers, rpm=60, tpm=None, prompts=80)
    events = stats["events"]["sim-frontier"]
    assert max_in_any_window([(t, 1) for t, status, _ in events]) <= 60
    # (How many calls the provider refused is a benchmark figure: bench/rate_limit.py.)
    assert len(attempts) >= 80


@pytest.mark.slow
def test_three_workers_never_exceed_tpm(tmp_path: Path, workers: Any) -> None:
    stats, _ = run_limited_job(tmp_path, workers, rpm=None, tpm=6000, prompts=70)
    events = stats["events"]["sim-frontier"]
    assert max_in_any_window([(t, tokens) for t, status, tokens in events if status == 200]) <= 6000


def test_429_pauses_the_whole_tier(tmp_path: Path, workers: Any) -> None:
    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=10))) as sim:
        config = write_config(
            tmp_path / "distillery.toml",
            base_url=sim.base_url,
            database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        )
        workers.start(config, concurrency=4)
        workers.start(config, concurrency=4)
        rows = [{"prompt": f"Question {i}: why is the sky blue?"} for i in range(300)]
        job_id, engine, _ = submit_file(write_jsonl(tmp_path / "p.jsonl", rows), config)
        time.sleep(1.0)  # let the tier get busy, then answer one call with 429 Retry-After: 5
        sim.fail_next(1, status=429, retry_after=5)
        job = wait_for_job(engine, job_id, workers)
        events = sim.stats()["events"]["sim-frontier"]
    assert job.completed == 300 and job.failed == 0
    (rate_limited,) = [t for t, status, _ in events if status == 429]
    # Calls already granted may land just after the 429 (a busy machine delays them);
    # then the whole tier is silent until the Retry-After has passed.
    silent = [t for t, _, _ in events if rate_limited + 1.5 < t < rate_limited + 4.8]
    assert silent == []
    assert (
        len([a for a in attempts_of(engine, job_id) if a.status == AttemptStatus.RATE_LIMITED]) == 1
    )
