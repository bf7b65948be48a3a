"""Global per-tier rate limits: a tier's `rpm` and `tpm` hold across every worker process
and machine together, because the schedule lives in Redis and is booked atomically before
each call (Celery's own `rate_limit` is per worker: celery #5732, #4727).

The rule is GCRA (the generic cell rate algorithm, as redis-cell implements it):
the tier's calls go out on a steady schedule of one per 60/rpm seconds, and its tokens at
tpm/60 a second, which is how providers enforce their per-minute limits (a steady rate
with a small burst allowance, not a minute's budget at once). Each acquire *books* the
next free slot of the schedule in one Lua script and gets back how long until that slot;
the caller sleeps until then in its own event loop. A slot is booked at most `AHEAD_S`
ahead; further out, the script says when to ask again. So the schedule does not drift:
a caller that wakes a little late does not push the slots after it, as "wait, then ask
again" did (8 % of the limit at 1,200 RPM: docs/performance.md, issue 14). A 429 puts the
whole tier on a shared cooldown for its Retry-After: nothing is booked before it ends.

Tokens are estimated before the call (`workers.tokens`) and reconciled with the usage
the provider returned: the difference moves the token schedule. Waiting is
`asyncio.sleep` in the caller's event loop: no thread, no database connection is held and
no CPU burned. In one process, one coroutine per tier asks Redis at a time (the others
queue behind it locally), so hundreds of calls in flight cost one booking round trip per
call, never a retry storm. `LocalRateLimiter` is the same rule in-process, for the
embedded mode without Redis, and the reference the Redis script is tested against.
"""

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from workers.chat import NotSent
from workers.ttlcache import TtlCache

WINDOW_S = 60.0
# The schedule runs a hair slower than the limit: 0.2 % leaves 0.12 s a minute, so calls
# that reach the provider a little later or earlier than their slot (network, a busy CPU)
# still fit a provider that counts a strict sliding 60 s window instead of a smoothed rate.
PACING_MARGIN = 1.002
# How far ahead of now a caller may book a slot. Far enough that the booking round trip
# and a late wake-up never leave a slot unused; near enough that a 429's cooldown, a
# cancelled job or a dead worker wastes at most this much of the schedule.
AHEAD_S = 0.25
# How stale a worker's view of a limitless tier's 429 cooldown may be (see below).
COOLDOWN_REFRESH_S = 0.1


@dataclass(frozen=True, slots=True)
class Limits:
    """A tier's limits; `burst_s` is how far ahead of the steady schedule a call may go
    (the provider's burst allowance, or part of it; 0 spaces calls evenly)."""

    rpm: int | None
    tpm: int | None
    burst_s: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm)

    @property
    def request_s(self) -> float:
        """Seconds of the schedule one call takes (0: no rpm)."""
        return WINDOW_S / self.rpm * PACING_MARGIN if self.rpm else 0.0

    @property
    def token_s(self) -> float:
        """Seconds of the schedule one token takes (0: no tpm)."""
        return WINDOW_S / self.tpm * PACING_MARGIN if self.tpm else 0.0

    def ticket(self, tokens: int) -> str | None:
        """What `reconcile` needs to move the token schedule: the estimate and its rate."""
        return f"{tokens}:{self.token_s!r}" if self.tpm else None


@dataclass(frozen=True, slots=True)
class Booking:
    """A booked slot `delay_s` from now (the limiter's clock: Redis's, or the process's),
    at `slot` on that clock; or, not `booked`, how long to wait before asking again."""

    delay_s: float
    booked: bool
    slot: float


class RateLimiter(Protocol):
    """A tier's limits, shared by every caller of that tier (an event loop's coroutines)."""

    async def acquire(
        self, tier: str, limits: Limits, tokens: int, *, max_wait_s: float | None = None
    ) -> str | None:
        """Wait until the call may go; returns a ticket for `reconcile`. With `max_wait_s`,
        raises `NotSent` instead of waiting longer than that in all."""
        ...

    async def reconcile(self, tier: str, ticket: str | None, tokens: int) -> None:
        """Replace the estimate on `ticket` with the tokens actually used."""
        ...

    async def cooldown(self, tier: str, seconds: float) -> None:
        """Pause the whole tier for `seconds` (a 429's Retry-After)."""
        ...

    async def close(self) -> None: ...


async def book_slot(
    book: Callable[[], Awaitable[Booking]],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    *,
    max_wait_s: float | None = None,
    waited: float = 0.0,
    tier: str = "",
) -> Booking:
    """Book a slot, asleep while the next free one is more than `AHEAD_S` ahead. A slot
    further than `max_wait_s` (counting the `waited` before) is refused as soon as it is
    known, and nothing is booked for it."""
    while not (booking := await book()).booked:
        refuse_overlong(tier, waited + booking.delay_s + AHEAD_S, max_wait_s)
        await sleep(booking.delay_s)
        waited += booking.delay_s
    return booking


def refuse_overlong(tier: str, wait_s: float, max_wait_s: float | None) -> None:
    if max_wait_s is not None and wait_s > max_wait_s:
        raise NotSent(
            f"tier {tier!r} is at its rate limit: {wait_s:.2f} s to wait, over "
            f"max_queue_s {max_wait_s:g}",
            wait_s=wait_s,
        )


async def ask_in_turn(lock: asyncio.Lock, tier: str, max_wait_s: float | None) -> float:
    """Take the tier's asking turn in this process; returns the seconds it took. Waiting
    for the turn counts against `max_wait_s` (its holder may be asleep for a far slot)."""
    started = time.monotonic()
    if max_wait_s is None:
        await lock.acquire()
    else:
        try:
            await asyncio.wait_for(lock.acquire(), max_wait_s)
        except TimeoutError:
            raise NotSent(
                f"tier {tier!r} is at its rate limit: no turn to book within max_queue_s "
                f"{max_wait_s:g}",
                wait_s=time.monotonic() - started,
            ) from None
    return time.monotonic() - started


async def sleep_until(booking: Booking) -> None:
    """Wait for the booked slot: a waiting call costs a timer, not a thread."""
    if booking.delay_s > 0:
        await asyncio.sleep(booking.delay_s)


def _ticket_delta(ticket: str, tokens: int) -> float:
    """Seconds the token schedule moves when `tokens` replace the ticket's estimate."""
    estimate, token_s = ticket.split(":")
    return (tokens - int(estimate)) * float(token_s)


# KEYS: state hash (fields r, t: the next slot of the request and token schedules; cool:
# the end of a 429 cooldown). ARGV: request_s, token_s, tokens, burst_s, ahead_s.
# Returns {seconds (until the slot, or until asking again), booked 1|0, slot}. Time comes
# from Redis, so every machine agrees; numbers are written with 6 decimals, not Lua's 14
# significant digits (which would round a Unix time to 0.1 ms).
BOOK_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local request_s, token_s = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, burst, ahead = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'r', 't', 'cool')
local next_r = tonumber(state[1]) or 0
local next_t = tonumber(state[2]) or 0
local cool = tonumber(state[3]) or 0
local slot = math.max(now, cool)
if request_s > 0 then slot = math.max(slot, next_r - burst) end
if token_s > 0 then slot = math.max(slot, next_t - burst) end
if slot - now > ahead then
  return {string.format('%.6f', slot - now - ahead), 0, string.format('%.6f', slot)}
end
if request_s > 0 then
  redis.call('HSET', KEYS[1], 'r', string.format('%.6f', math.max(next_r, slot) + request_s))
end
if token_s > 0 then
  local after = math.max(next_t, slot) + tokens * token_s
  redis.call('HSET', KEYS[1], 't', string.format('%.6f', after))
end
redis.call('EXPIRE', KEYS[1], 3600)
return {string.format('%.6f', slot - now), 1, string.format('%.6f', slot)}
"""

# KEYS: state hash. ARGV: seconds the token schedule moves (the usage less the estimate).
RECONCILE_LUA = """
if redis.call('HEXISTS', KEYS[1], 't') == 0 then return 0 end
local after = tonumber(redis.call('HGET', KEYS[1], 't')) + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 't', string.format('%.6f', after))
return 1
"""

# KEYS: state hash. Seconds left of the tier's 429 cooldown (0 when none).
COOL_LEFT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cool = tonumber(redis.call('HGET', KEYS[1], 'cool')) or 0
return tostring(math.max(0, cool - now))
"""

COOLDOWN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cool = tonumber(redis.call('HGET', KEYS[1], 'cool')) or 0
redis.call('HSET', KEYS[1], 'cool', string.format('%.6f', math.max(cool, now + tonumber(ARGV[1]))))
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""


def redis_key(prefix: str, tier: str) -> list[str]:
    # One hash slot per tier ({tier}) so the scripts also run on Redis Cluster.
    return [f"{prefix}:{{{tier}}}:schedule"]


def book_args(limits: Limits, tokens: int) -> list[Any]:
    return [limits.request_s, limits.token_s, tokens, limits.burst_s, AHEAD_S]


def booking(reply: Any) -> Booking:
    seconds, booked, slot = reply
    return Booking(float(seconds), bool(int(booked)), float(slot))


PREFIX = "distillery:ratelimit"


class RedisRateLimiter:
    """The limits shared through Redis (`redis.asyncio`), across processes and machines.
    Open one per event loop (its asker locks belong to the loop).

    A tier with limits books a slot before every call; one coroutine per tier asks at a
    time. A tier without limits only has to respect a 429 cooldown; asking Redis about it
    before every call cost a fifth of a worker's CPU, so this process re-reads a tier's
    cooldown at most every `COOLDOWN_REFRESH_S` (and knows its own 429s at once). Another
    worker's 429 pauses this one within that time."""

    def __init__(self, client: Any, *, prefix: str = PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._book = client.register_script(BOOK_LUA)
        self._reconcile = client.register_script(RECONCILE_LUA)
        self._cooldown = client.register_script(COOLDOWN_LUA)
        self._cool_left = client.register_script(COOL_LEFT_LUA)
        self.cool_until: TtlCache[str, float] = TtlCache(COOLDOWN_REFRESH_S)  # monotonic
        self.askers: dict[str, asyncio.Lock] = {}

    async def acquire(
        self, tier: str, limits: Limits, tokens: int, *, max_wait_s: float | None = None
    ) -> str | None:
        if not limits.active:
            await self._wait_for_cooldown(tier, max_wait_s)
            return None
        lock = self.askers.setdefault(tier, asyncio.Lock())
        waited = await ask_in_turn(lock, tier, max_wait_s)
        try:
            booked = await book_slot(
                lambda: self.book(tier, limits, tokens),
                max_wait_s=max_wait_s,
                waited=waited,
                tier=tier,
            )
        finally:
            lock.release()
        await sleep_until(booked)  # outside the lock: the next caller books meanwhile
        return limits.ticket(tokens)

    async def book(self, tier: str, limits: Limits, tokens: int) -> Booking:
        """One atomic booking (or, too far ahead, how long until asking again)."""
        reply = await self._book(keys=redis_key(self.prefix, tier), args=book_args(limits, tokens))
        return booking(reply)

    async def _wait_for_cooldown(self, tier: str, max_wait_s: float | None) -> None:
        async def read() -> float:
            left = await self._cool_left(keys=redis_key(self.prefix, tier))
            return time.monotonic() + float(left)

        started = time.monotonic()
        while (wait := await self.cool_until.get(tier, read) - time.monotonic()) > 0:
            refuse_overlong(tier, time.monotonic() - started + wait, max_wait_s)
            await asyncio.sleep(wait)

    async def reconcile(self, tier: str, ticket: str | None, tokens: int) -> None:
        if ticket:
            delta = _ticket_delta(ticket, tokens)
            await self._reconcile(keys=redis_key(self.prefix, tier), args=[repr(delta)])

    async def cooldown(self, tier: str, seconds: float) -> None:
        self.cool_until.put(tier, time.monotonic() + seconds)
        await self._cooldown(keys=redis_key(self.prefix, tier), args=[seconds])

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class _Schedule:
    next_r: float = 0.0
    next_t: float = 0.0
    cool: float = 0.0


class LocalRateLimiter:
    """The same rule within one process (the embedded mode without Redis), and the
    reference the Redis script is tested against. `book_now` is the rule itself, on an
    injectable clock; the lock lets several event loops (threads) share one instance."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.tiers: dict[str, _Schedule] = {}

    def book_now(self, tier: str, limits: Limits, tokens: int) -> Booking:
        """BOOK_LUA, line for line, on this limiter's clock."""
        with self.lock:
            state, now = self.tiers.setdefault(tier, _Schedule()), self.clock()
            slot = max(now, state.cool)
            if limits.request_s:
                slot = max(slot, state.next_r - limits.burst_s)
            if limits.token_s:
                slot = max(slot, state.next_t - limits.burst_s)
            if slot - now > AHEAD_S:
                return Booking(slot - now - AHEAD_S, False, slot)
            if limits.request_s:
                state.next_r = max(state.next_r, slot) + limits.request_s
            if limits.token_s:
                state.next_t = max(state.next_t, slot) + tokens * limits.token_s
            return Booking(slot - now, True, slot)

    async def book(self, tier: str, limits: Limits, tokens: int) -> Booking:
        return self.book_now(tier, limits, tokens)

    async def acquire(
        self, tier: str, limits: Limits, tokens: int, *, max_wait_s: float | None = None
    ) -> str | None:
        booking = await book_slot(
            lambda: self.book(tier, limits, tokens), max_wait_s=max_wait_s, tier=tier
        )
        await sleep_until(booking)
        return limits.ticket(tokens)

    async def reconcile(self, tier: str, ticket: str | None, tokens: int) -> None:
        if ticket:
            with self.lock:
                self.tiers.setdefault(tier, _Schedule()).next_t += _ticket_delta(ticket, tokens)

    async def cooldown(self, tier: str, seconds: float) -> None:
        with self.lock:
            state = self.tiers.setdefault(tier, _Schedule())
            state.cool = max(state.cool, self.clock() + seconds)

    async def close(self) -> None:
        pass


# One in-process limiter for the embedded mode: every event loop of the process shares it.
_LOCAL = LocalRateLimiter()
# Connections from one event loop to Redis for the rate limiter.
REDIS_CONNECTIONS = 32


def open_rate_limiter(redis_url: str | None) -> RateLimiter:
    """Shared through Redis when there is one; in-process for the embedded mode. Open one
    per event loop, in it (redis.asyncio connections belong to the loop that opened them)."""
    if not redis_url:
        return _LOCAL
    import redis.asyncio

    # A blocking pool: hundreds of calls in flight ask for capacity at once, and each ask
    # is a short script; they queue for a connection instead of failing with "Too many
    # connections" (the default pool's answer past its size).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        redis_url, max_connections=REDIS_CONNECTIONS, timeout=None
    )
    return RedisRateLimiter(redis.asyncio.Redis.from_pool(pool))  # closing it closes the pool
