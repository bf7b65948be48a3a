"""Global per-tier rate limits: the algorithm on a fake clock, the Redis script against real
Redis, and three real worker processes against a simulator enforcing the same limit."""

import asyncio
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from models import AttemptStatus, JobStatus
from simulator import ModelBehaviour, SimConfig, start_in_thread
from tests.helpers.config import write_config
from tests.helpers.pipeline import attempts_of, submit_file, wait_for_job, write_jsonl
from tests.helpers.services import TEST_REDIS_URL
from workers.ratelimit import Limits, LocalRateLimiter, RedisRateLimiter, estimate_tokens


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_local_limiter_paces_calls_evenly() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock, sleep=clock.sleep)
    grants = []
    for _ in range(10):
        limiter.acquire("small", Limits(rpm=60, tpm=None), 10)
        grants.append(clock.now)
    gaps = [b - a for a, b in pairwise(grants)]
    assert all(gap >= 1.0 for gap in gaps)  # 60 rpm: one a second, never a burst


def test_local_limiter_token_window_and_reconcile() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock, sleep=clock.sleep)
    limits = Limits(rpm=None, tpm=1000)
    ticket = limiter.acquire("t", limits, 600)
    wait, _ = limiter.try_acquire("t", limits, 600, "x")
    assert 61 < wait <= 62.01  # the window is full until the first call ages out
    limiter.reconcile("t", ticket, 300)  # it used fewer tokens than estimated
    assert limiter.try_acquire("t", limits, 600, "y") == (0.0, "y")


def test_local_cooldown_pauses_the_tier_even_without_limits() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock, sleep=clock.sleep)
    limiter.cooldown("t", 5)
    start = clock.now
    limiter.acquire("t", Limits(None, None), 1)
    assert clock.now - start >= 5


def test_token_estimate_counts_prompt_and_answer() -> None:
    messages = [{"role": "user", "content": "x" * 400}]
    assert estimate_tokens(messages, 50) == 100 + 4 + 50
    assert estimate_tokens(messages, None) == 104 + 256


@pytest.fixture
def redis_limiter(clean_redis: Any) -> RedisRateLimiter:
    return RedisRateLimiter(clean_redis)


def test_redis_limiter_spaces_grants_across_threads(redis_limiter: RedisRateLimiter) -> None:
    limits = Limits(rpm=600, tpm=None)  # one call per 0.1 s
    grants: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(4):
            redis_limiter.acquire("small", limits, 1)
            with lock:
                grants.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    grants.sort()
    gaps = [b - a for a, b in pairwise(grants)]
    assert len(grants) == 16
    assert min(gaps) >= 0.09  # grants are spaced, never two at once (a lower bound only)


def test_redis_window_reconcile_and_cooldown(redis_limiter: RedisRateLimiter) -> None:
    limits = Limits(rpm=None, tpm=1000)
    _, ticket = redis_limiter.try_acquire("t", limits, 600, "a")
    assert ticket == "a:600"
    wait, granted = redis_limiter.try_acquire("t", limits, 600, "b")
    assert granted is None and 61 < wait <= 62.01
    redis_limiter.reconcile("t", ticket, 300)
    assert redis_limiter.try_acquire("t", limits, 600, "c")[1] == "c:600"
    redis_limiter.cooldown("t", 3)
    wait, granted = redis_limiter.try_acquire("t", Limits(None, None), 1, "d")
    assert granted is None and 2.5 < wait <= 3.0


def async_limiter() -> Any:
    import redis.asyncio

    from workers.ratelimit import AsyncRedisRateLimiter

    return AsyncRedisRateLimiter(redis.asyncio.Redis.from_url(TEST_REDIS_URL))


def test_async_and_thread_limiters_share_one_window(
    clean_redis: Any, redis_limiter: RedisRateLimiter
) -> None:
    """The call loop's limiter and the threads' one (the LLM router's) count the same calls."""
    limits = Limits(rpm=None, tpm=1000)

    async def grant_then_wait() -> tuple[str | None, float]:
        limiter = async_limiter()
        ticket = await limiter.acquire("t", limits, 600)
        started = time.monotonic()
        # The window is now full for the thread-side limiter too:
        wait, granted = redis_limiter.try_acquire("t", limits, 600, "sync")
        assert granted is None and 61 < wait <= 62.01
        await limiter.reconcile("t", ticket, 100)
        return redis_limiter.try_acquire("t", limits, 600, "sync2")[1], time.monotonic() - started

    granted, _ = asyncio.run(grant_then_wait())
    assert granted == "sync2:600"  # reconciled down to 100 tokens, so 600 more fit


def test_a_limitless_tier_waits_out_any_workers_cooldown(clean_redis: Any) -> None:
    """A tier without rpm/tpm asks Redis about its 429 cooldown at most every
    COOLDOWN_REFRESH_S per process: its own 429 pauses it at once, another process's within
    that time, and either way for the whole Retry-After."""
    from workers.ratelimit import COOLDOWN_REFRESH_S

    async def run() -> tuple[float, float]:
        this, other = async_limiter(), async_limiter()  # two worker processes
        none = Limits(None, None)
        assert await this.acquire("t", none, 1) is None  # no cooldown: no wait
        await other.cooldown("t", 1.0)  # another worker got a 429 with Retry-After: 1
        cooled = time.monotonic()
        await asyncio.sleep(COOLDOWN_REFRESH_S)  # this one's view is now stale
        await this.acquire("t", none, 1)
        theirs = time.monotonic() - cooled
        await this.cooldown("t", 0.5)  # its own 429
        cooled = time.monotonic()
        await this.acquire("t", none, 1)
        return theirs, time.monotonic() - cooled

    theirs, own = asyncio.run(run())
    assert theirs >= 0.95 and own >= 0.5  # the whole Retry-After, less Redis clock skew


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
