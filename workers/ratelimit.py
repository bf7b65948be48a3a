"""Global per-tier rate limits: a tier's `rpm` and `tpm` hold across every worker process
and machine together, because the count lives in Redis and is checked atomically before
each call (Celery's own `rate_limit` is per worker: celery #5732, #4727).

Two rules, both in one Lua script:
* pacing: calls are spaced at least 60/rpm seconds apart (slightly more), so a minute's
  budget never goes out as a burst that the provider answers with 429s;
* a sliding 60-second window: no more than `rpm` calls and `tpm` tokens in any window.
A 429 puts the whole tier on a shared cooldown for its Retry-After.

Tokens are estimated before the call (`workers.tokens`) and reconciled with the usage
the provider returned. Waiting is `asyncio.sleep` in the caller's event loop: no thread,
no database connection is held and no CPU burned. `LocalRateLimiter` is the same algorithm
in-process, for the embedded mode without Redis, and the reference the Redis script is
tested against.
"""

import asyncio
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from workers.chat import NotSent
from workers.ttlcache import TtlCache

WINDOW_S = 60.0
# The limiter counts its window a second longer than the provider's minute: a call granted
# here reaches the provider a little later (network, a busy CPU), and this guard keeps any
# provider-side minute at or under the limit. It costs about 3 % of the budget.
GUARD_S = 2.0
# Spacing a hair wider than 60/rpm keeps any 60-second window at or under rpm calls even
# when a call lands exactly on the window's edge.
PACING_MARGIN = 1.002
# How stale a worker's view of a limitless tier's 429 cooldown may be (see below).
COOLDOWN_REFRESH_S = 0.1


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None
    tpm: int | None

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm)

    @property
    def spacing_s(self) -> float:
        return WINDOW_S / self.rpm * PACING_MARGIN if self.rpm else 0.0


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


def _jittered(wait: float) -> float:
    # A little jitter, so the waiters of a tier do not all ask again in the same instant.
    return wait + random.uniform(0, min(0.05, wait / 10))


async def wait_loop(
    try_acquire: Callable[[], Awaitable[tuple[float, str | None]]],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    *,
    max_wait_s: float | None = None,
    tier: str = "",
) -> str | None:
    """Ask until allowed, sleeping the time the limiter says: a waiting call costs a timer,
    not a thread. A wait past `max_wait_s` (in all) is refused as soon as it is known."""
    waited = 0.0
    while True:
        wait, ticket = await try_acquire()
        if wait <= 0:
            return ticket
        refuse_overlong(tier, waited + wait, max_wait_s)
        pause = _jittered(wait)
        await sleep(pause)
        waited += pause


def refuse_overlong(tier: str, wait_s: float, max_wait_s: float | None) -> None:
    if max_wait_s is not None and wait_s > max_wait_s:
        raise NotSent(
            f"tier {tier!r} is at its rate limit: {wait_s:.2f} s to wait, over "
            f"max_queue_s {max_wait_s:g}",
            wait_s=wait_s,
        )


# KEYS: state hash, window zset (score = time, member = "ticket:tokens").
# ARGV: spacing_s, rpm (0 = none), tpm (0 = none), tokens, ticket, window_s.
# Returns {wait_seconds_as_string, ticket}. Time comes from Redis, so every machine agrees.
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local spacing, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local window = tonumber(ARGV[6])
local state = redis.call('HMGET', KEYS[1], 'next', 'cool', 'tokens')
local next_at = tonumber(state[1]) or 0
local cool = tonumber(state[2]) or 0
local used = tonumber(state[3]) or 0
local wait = math.max(next_at - now, cool - now)
if wait > 0 then return {tostring(wait), ''} end
if rpm == 0 and tpm == 0 then return {'0', ''} end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - window)
for _, member in ipairs(expired) do
  used = used - tonumber(string.match(member, ':(%-?%d+)$'))
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window) end
if used < 0 then used = 0 end
local count = redis.call('ZCARD', KEYS[2])
local full = (rpm > 0 and count >= rpm) or (tpm > 0 and count > 0 and used + tokens > tpm)
if full then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  redis.call('HSET', KEYS[1], 'tokens', used)
  return {tostring(tonumber(oldest[2]) + window - now + 0.001), ''}
end
local member = ARGV[5] .. ':' .. tokens
redis.call('ZADD', KEYS[2], now, member)
redis.call('HSET', KEYS[1], 'next', now + spacing, 'tokens', used + tokens)
redis.call('EXPIRE', KEYS[1], 3600)
redis.call('EXPIRE', KEYS[2], 3600)
return {'0', member}
"""

# KEYS: state hash, window zset. ARGV: ticket ("id:estimate", the window member), actual tokens.
RECONCILE_LUA = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score then return 0 end
local old = tonumber(string.match(ARGV[1], ':(%-?%d+)$'))
local id = string.match(ARGV[1], '^(.*):')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[2], score, id .. ':' .. ARGV[2])
redis.call('HINCRBY', KEYS[1], 'tokens', tonumber(ARGV[2]) - old)
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
redis.call('HSET', KEYS[1], 'cool', math.max(cool, now + tonumber(ARGV[1])))
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""


def redis_keys(prefix: str, tier: str) -> list[str]:
    # One hash slot per tier ({tier}) so the scripts also run on Redis Cluster.
    return [f"{prefix}:{{{tier}}}:state", f"{prefix}:{{{tier}}}:window"]


def acquire_args(limits: Limits, tokens: int, ticket: str) -> list[Any]:
    return [limits.spacing_s, limits.rpm or 0, limits.tpm or 0, tokens, ticket, WINDOW_S + GUARD_S]


def granted(reply: Any) -> tuple[float, str | None]:
    """(0, window ticket) when granted, else (seconds to wait, None)."""
    wait, ticket = reply
    if isinstance(ticket, bytes):
        ticket = ticket.decode()
    return float(wait), ticket or None


PREFIX = "distillery:ratelimit"


class RedisRateLimiter:
    """The limits shared through Redis (`redis.asyncio`), across processes and machines.

    A tier with limits runs the acquire script before every call: it must be counted. A
    tier without limits only has to respect a 429 cooldown; asking Redis about it before
    every call cost a fifth of a worker's CPU, so this process re-reads a tier's cooldown at
    most every `COOLDOWN_REFRESH_S` (and knows its own 429s at once). Another worker's 429
    pauses this one within that time."""

    def __init__(self, client: Any, *, prefix: str = PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._reconcile = client.register_script(RECONCILE_LUA)
        self._cooldown = client.register_script(COOLDOWN_LUA)
        self._cool_left = client.register_script(COOL_LEFT_LUA)
        self.cool_until: TtlCache[str, float] = TtlCache(COOLDOWN_REFRESH_S)  # monotonic

    async def acquire(
        self, tier: str, limits: Limits, tokens: int, *, max_wait_s: float | None = None
    ) -> str | None:
        if not limits.active:
            await self._wait_for_cooldown(tier, max_wait_s)
            return None
        ticket = uuid.uuid4().hex
        return await wait_loop(
            lambda: self.try_acquire(tier, limits, tokens, ticket),
            max_wait_s=max_wait_s,
            tier=tier,
        )

    async def try_acquire(
        self, tier: str, limits: Limits, tokens: int, ticket: str
    ) -> tuple[float, str | None]:
        """One atomic check: (0, window ticket) when granted, else (seconds to wait, None)."""
        keys, args = redis_keys(self.prefix, tier), acquire_args(limits, tokens, ticket)
        return granted(await self._acquire(keys=keys, args=args))

    async def _wait_for_cooldown(self, tier: str, max_wait_s: float | None) -> None:
        async def read() -> float:
            left = await self._cool_left(keys=redis_keys(self.prefix, tier)[:1])
            return time.monotonic() + float(left)

        started = time.monotonic()
        while (wait := await self.cool_until.get(tier, read) - time.monotonic()) > 0:
            refuse_overlong(tier, time.monotonic() - started + wait, max_wait_s)
            await asyncio.sleep(_jittered(wait))

    async def reconcile(self, tier: str, ticket: str | None, tokens: int) -> None:
        if ticket:
            await self._reconcile(keys=redis_keys(self.prefix, tier), args=[ticket, tokens])

    async def cooldown(self, tier: str, seconds: float) -> None:
        self.cool_until.put(tier, time.monotonic() + seconds)
        await self._cooldown(keys=redis_keys(self.prefix, tier)[:1], args=[seconds])

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class _TierState:
    next_at: float = 0.0
    cool: float = 0.0
    window: deque[tuple[float, str, int]] | None = None

    def __post_init__(self) -> None:
        self.window = deque()


class LocalRateLimiter:
    """The same rules within one process (the embedded mode without Redis), and the
    reference the Redis script is tested against. `try_acquire` is the rule itself, on an
    injectable clock; the lock lets several event loops (threads) share one instance."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.tiers: dict[str, _TierState] = {}

    def _state(self, tier: str) -> _TierState:
        return self.tiers.setdefault(tier, _TierState())

    async def try_acquire(
        self, tier: str, limits: Limits, tokens: int, ticket: str
    ) -> tuple[float, str | None]:
        return self.check(tier, limits, tokens, ticket)

    def check(
        self, tier: str, limits: Limits, tokens: int, ticket: str
    ) -> tuple[float, str | None]:
        """The rule itself, on this limiter's clock: (0, ticket) when granted, else (seconds
        to wait, None)."""
        with self.lock:
            state, now = self._state(tier), self.clock()
            window = state.window
            assert window is not None
            wait = max(state.next_at - now, state.cool - now)
            if wait > 0:
                return wait, None
            if not limits.active:
                return 0.0, None
            while window and window[0][0] <= now - WINDOW_S - GUARD_S:
                window.popleft()
            used = sum(n for _, _, n in window)
            if (limits.rpm and len(window) >= limits.rpm) or (
                limits.tpm and window and used + tokens > limits.tpm
            ):
                return window[0][0] + WINDOW_S + GUARD_S - now + 0.001, None
            window.append((now, ticket, tokens))
            state.next_at = now + limits.spacing_s
            return 0.0, ticket

    async def acquire(
        self, tier: str, limits: Limits, tokens: int, *, max_wait_s: float | None = None
    ) -> str | None:
        ticket = uuid.uuid4().hex
        return await wait_loop(
            lambda: self.try_acquire(tier, limits, tokens, ticket),
            max_wait_s=max_wait_s,
            tier=tier,
        )

    async def reconcile(self, tier: str, ticket: str | None, tokens: int) -> None:
        with self.lock:
            window = self._state(tier).window
            assert window is not None
            for i, (at, held, _) in enumerate(window):
                if held == ticket:
                    window[i] = (at, held, tokens)

    async def cooldown(self, tier: str, seconds: float) -> None:
        with self.lock:
            state = self._state(tier)
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
