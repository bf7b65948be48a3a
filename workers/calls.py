"""A model call as workers make it: wait for the tier's global rate limit, call, then
reconcile the token estimate with the real usage (or pause the tier on a 429).

Two forms over the same limits: `limited_call` for threads (the LLM router's one call per
prompt) and `limited_call_async` for the workers' call loop (answers in bulk)."""

from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

from models import AttemptStatus
from workers.completion import CallError, Completion
from workers.ratelimit import (
    AsyncLocalRateLimiter,
    AsyncRateLimiter,
    AsyncRedisRateLimiter,
    Limits,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from workers.settings import Settings, TierConfig
from workers.tokens import call_estimate

# A 429 without Retry-After still pauses the tier, briefly.
DEFAULT_COOLDOWN_S = 1.0
# Connections from one worker's call loop to Redis for the rate limiter.
REDIS_CONNECTIONS = 32


@lru_cache(maxsize=4)
def rate_limiter(redis_url: str | None) -> RateLimiter:
    """Shared through Redis when there is one; in-process for the embedded mode."""
    if not redis_url:
        return LocalRateLimiter()
    import redis

    return RedisRateLimiter(redis.Redis.from_url(redis_url))


def async_rate_limiter(redis_url: str | None) -> AsyncRateLimiter:
    """The same limits for the call loop; make one per event loop (redis.asyncio
    connections belong to the loop that opened them)."""
    if not redis_url:
        local = rate_limiter(None)
        assert isinstance(local, LocalRateLimiter)
        return AsyncLocalRateLimiter(local)
    import redis.asyncio

    # A blocking pool: hundreds of calls in flight ask for capacity at once, and each ask
    # is a short script; they queue for a connection instead of failing with "Too many
    # connections" (the default pool's answer past its size).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        redis_url, max_connections=REDIS_CONNECTIONS, timeout=None
    )
    return AsyncRedisRateLimiter(redis.asyncio.Redis(connection_pool=pool))


def _limits(tier: TierConfig) -> Limits:
    return Limits(tier.rpm, tier.tpm)


def _used(completion: Completion) -> int:
    return completion.prompt_tokens + completion.completion_tokens


def _charged(error: CallError, estimate: int) -> int:
    # An HTTP answer (even an error) was not a generation; no answer at all may have been one.
    return 0 if error.http_status else estimate


def limited_call(
    settings: Settings,
    tier_name: str,
    request: dict[str, Any],
    *,
    before_call: Callable[[], None] | None = None,
) -> Completion:
    """One call on `tier_name` within its limits; `before_call` runs after the wait for
    capacity, right before the request goes out (e.g. a cancellation check)."""
    from workers.client import call_tier  # the openai SDK, imported only by those who call

    tier = settings.require_tier(tier_name)
    limiter = rate_limiter(settings.redis_url)
    estimate = call_estimate(tier, request["messages"], request.get("max_tokens"))
    ticket = limiter.acquire(tier_name, _limits(tier), estimate)
    if before_call is not None:
        before_call()
    try:
        completion = call_tier(tier, tier_name, request)
    except CallError as error:
        if error.status == AttemptStatus.RATE_LIMITED:
            limiter.cooldown(tier_name, error.retry_after or DEFAULT_COOLDOWN_S)
        limiter.reconcile(tier_name, ticket, _charged(error, estimate))
        raise
    limiter.reconcile(tier_name, ticket, _used(completion))
    return completion


async def limited_call_async(
    tier_name: str,
    tier: TierConfig,
    request: dict[str, Any],
    *,
    limiter: AsyncRateLimiter,
    call: Callable[[TierConfig, str, dict[str, Any]], Awaitable[Completion]],
    before_call: Callable[[], Awaitable[None]] | None = None,
) -> Completion:
    """`limited_call` in the call loop; `call` makes the request (`workers.aclient`)."""
    estimate = call_estimate(tier, request["messages"], request.get("max_tokens"))
    ticket = await limiter.acquire(tier_name, _limits(tier), estimate)
    if before_call is not None:
        await before_call()
    try:
        completion = await call(tier, tier_name, request)
    except CallError as error:
        if error.status == AttemptStatus.RATE_LIMITED:
            await limiter.cooldown(tier_name, error.retry_after or DEFAULT_COOLDOWN_S)
        await limiter.reconcile(tier_name, ticket, _charged(error, estimate))
        raise
    await limiter.reconcile(tier_name, ticket, _used(completion))
    return completion
