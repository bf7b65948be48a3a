"""Global per-tier rate limits: each scenario once, run against both backends (the Redis
script on real Redis, and the in-process limiter), judged by the slots the limiter booked on
its own clock (Redis's TIME, or the process's); the rule itself on a fake clock; and three
real worker processes against a simulator enforcing the same limit."""

import asyncio
import math
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
    AHEAD_S,
    COOLDOWN_REFRESH_S,
    Booking,
    Limits,
    LocalRateLimiter,
    RedisRateLimiter,
    book_slot,
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


def run_slots(limiter: Limiter, limits: Limits, count: int) -> list[Booking]:
    """`count` bookings, as fast as the limiter grants them (asleep while refused)."""

    async def scenario() -> list[Booking]:
        return [await book_slot(lambda: limiter.book("t", limits, 1)) for _ in range(count)]

    return run(scenario)


def most_in_any_span(slots: list[float], span: float) -> int:
    """The most slots within any closed `span`-second interval."""
    slots, most, first = sorted(slots), 0, 0
    for last, at in enumerate(slots):
        while slots[first] < at - span - 1e-6:  # the script writes slots to 1 µs
            first += 1
        most = max(most, last - first + 1)
    return most


def test_concurrent_callers_book_consecutive_slots(make_limiter: Callable[[], Limiter]) -> None:
    """Four callers (processes, with Redis) booking at once get distinct slots of the one
    schedule, never two closer than the interval, each one its own booking."""
    limits = Limits(rpm=1200, tpm=None)  # one slot per 50 ms

    async def scenario() -> list[Booking]:
        limiters = [make_limiter() for _ in range(4)]
        bookings: list[Booking] = []

        async def caller(limiter: Limiter) -> None:
            for _ in range(6):
                bookings.append(await book_slot(lambda: limiter.book("t", limits, 1)))

        await asyncio.gather(*(caller(limiter) for limiter in limiters))
        return bookings

    bookings = run(scenario)
    slots = sorted(b.slot for b in bookings)
    assert len(slots) == 24 and all(b.booked and 0 <= b.delay_s <= AHEAD_S for b in bookings)
    assert min(b - a for a, b in pairwise(slots)) >= limits.request_s - 1e-6
    assert most_in_any_span(slots, 1.0) <= 1.0 / limits.request_s + 1


def test_a_slot_further_ahead_than_ahead_s_is_not_booked(
    make_limiter: Callable[[], Limiter],
) -> None:
    limits = Limits(rpm=60, tpm=None)  # one slot a second (and a hair)

    async def scenario() -> list[Booking]:
        limiter = make_limiter()
        return [await limiter.book("t", limits, 1) for _ in range(3)]

    first, refused, again = run(scenario)
    assert first.booked and first.delay_s == 0  # an idle tier: now
    assert not refused.booked and not again.booked  # refusing books nothing
    assert math.isclose(refused.slot, first.slot + limits.request_s, abs_tol=1e-5)
    assert math.isclose(again.slot, refused.slot, abs_tol=1e-5)
    # ask again when the slot is AHEAD_S away (the limiter's clock moved a little meanwhile)
    assert limits.request_s - AHEAD_S - 0.1 < refused.delay_s <= limits.request_s - AHEAD_S


def test_a_burst_allowance_lets_an_idle_tier_go_at_once(
    make_limiter: Callable[[], Limiter],
) -> None:
    """GCRA's bound: at most (span + burst) / interval + 1 slots within any span."""
    limits = Limits(rpm=600, tpm=None, burst_s=0.5)
    slots = [b.slot for b in run_slots(make_limiter(), limits, 12)]
    # the call on schedule and five more of 0.1002 s in the 0.5 s allowance (the fifth
    # 1 ms late): an idle tier's first six calls go at once, the rest 0.1002 s apart
    at_once = [slot for slot in slots if slot - slots[0] < 0.01]
    assert len(at_once) == 6
    assert min(b - a for a, b in pairwise(slots[6:])) >= limits.request_s - 1e-6
    for span in (0.0, 0.3, 1.0):
        assert most_in_any_span(slots, span) <= (span + limits.burst_s) / limits.request_s + 1


def test_tokens_move_the_schedule_and_reconcile_moves_it_back(
    make_limiter: Callable[[], Limiter],
) -> None:
    limits = Limits(rpm=None, tpm=1000)  # 600 tokens take 36 s of the schedule

    async def scenario() -> None:
        limiter, other = make_limiter(), make_limiter()
        first = await limiter.book("t", limits, 600)
        ticket = limits.ticket(600)
        refused = await other.book("t", limits, 600)
        assert first.booked and not refused.booked
        assert math.isclose(refused.slot, first.slot + 600 * limits.token_s, abs_tol=1e-5)
        await limiter.reconcile("t", ticket, 300)  # it used fewer tokens than estimated
        closer = await other.book("t", limits, 600)
        assert math.isclose(closer.slot, first.slot + 300 * limits.token_s, abs_tol=1e-5)
        await limiter.reconcile("t", ticket, 0)  # an error: no tokens used after all
        assert (await other.book("t", limits, 600)).booked

    run(scenario)


def test_a_cooldown_pauses_a_limited_tier(make_limiter: Callable[[], Limiter]) -> None:
    async def scenario() -> None:
        limiter, other = make_limiter(), make_limiter()
        await limiter.cooldown("t", 3)
        refused = await other.book("t", Limits(rpm=6000, tpm=None), 1)
        assert not refused.booked and 2.5 - AHEAD_S < refused.delay_s <= 3.0 - AHEAD_S

    run(scenario)


class CountingLimiter(RedisRateLimiter):
    """The Redis limiter, counting its bookings and how many were asked at once."""

    def __init__(self) -> None:
        import redis.asyncio

        super().__init__(redis.asyncio.Redis.from_url(TEST_REDIS_URL))
        self.asks = self.asking = self.most_at_once = 0

    async def book(self, tier: str, limits: Limits, tokens: int) -> Booking:
        self.asks, self.asking = self.asks + 1, self.asking + 1
        self.most_at_once = max(self.most_at_once, self.asking)
        try:
            return await super().book(tier, limits, tokens)
        finally:
            self.asking -= 1


@pytest.mark.usefixtures("clean_redis")
def test_one_coroutine_per_tier_asks_redis_at_a_time() -> None:
    """Fifty calls waiting at once on one process: one booking each (plus an ask while the
    schedule is more than AHEAD_S ahead), never two asks of one tier in flight together."""
    limits = Limits(rpm=6000, tpm=None)  # 10 ms slots: 50 calls take half a second

    async def scenario() -> CountingLimiter:
        limiter = CountingLimiter()
        await asyncio.gather(*(limiter.acquire("t", limits, 1) for _ in range(50)))
        await limiter.close()
        return limiter

    limiter = run(scenario)
    assert limiter.most_at_once == 1
    refused_asks = limiter.asks - 50
    assert 0 <= refused_asks <= 50  # at most one wait per booking, never a retry storm


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


def test_the_rule_keeps_the_schedule_when_callers_come_late() -> None:
    """A caller that asks late does not push the slots after it: the schedule stays one
    slot per interval from the first (the drift that "wait, then ask again" had)."""
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    limits = Limits(rpm=60, tpm=None)
    slots = []
    for n in range(20):
        booking = limiter.book_now("small", limits, 10)
        while not booking.booked:
            clock.now += booking.delay_s + 0.01 * (n % 3)  # wakes up 0-20 ms late
            booking = limiter.book_now("small", limits, 10)
        slots.append(booking.slot)
    gaps = [b - a for a, b in pairwise(slots)]
    assert all(math.isclose(gap, limits.request_s) for gap in gaps)


def test_the_rule_never_books_more_than_rpm_in_a_minute() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    limits = Limits(rpm=60, tpm=None)
    slots = []
    for _ in range(20000):  # an ask every 10 ms for 200 s
        booking = limiter.book_now("t", limits, 1)
        if booking.booked:
            slots.append(booking.slot)
        clock.now += 0.01
    assert 199 <= len(slots) <= 201
    assert most_in_any_span(slots, 60.0) <= 60  # the 0.2 % margin: not 61 slots


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
        # The tier's first call is answered 429 Retry-After: 5, set before the job starts:
        # 300 calls at 256 in flight (the default) may all be done within a second.
        sim.fail_next(1, status=429, retry_after=5)
        job_id, engine, _ = submit_file(write_jsonl(tmp_path / "p.jsonl", rows), config)
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
