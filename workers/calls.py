"""A model call as workers make it: wait for the tier's global rate limit, call, then
reconcile the token estimate with the real usage (or pause the tier on a 429)."""

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from models import AttemptStatus
from workers.client import CallError, Completion, call_tier
from workers.ratelimit import (
    Limits,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    estimate_tokens,
)
from workers.settings import Settings

# A 429 without Retry-After still pauses the tier, briefly.
DEFAULT_COOLDOWN_S = 1.0


@lru_cache(maxsize=4)
def rate_limiter(redis_url: str | None) -> RateLimiter:
    """Shared through Redis when there is one; in-process for the embedded mode."""
    if not redis_url:
        return LocalRateLimiter()
    import redis

    return RedisRateLimiter(redis.Redis.from_url(redis_url))


def limited_call(
    settings: Settings,
    tier_name: str,
    request: dict[str, Any],
    *,
    before_call: Callable[[], None] | None = None,
) -> Completion:
    """One call on `tier_name` within its limits; `before_call` runs after the wait for
    capacity, right before the request goes out (e.g. a cancellation check)."""
    tier = settings.require_tier(tier_name)
    limiter = rate_limiter(settings.redis_url)
    estimate = estimate_tokens(request["messages"], request.get("max_tokens"))
    ticket = limiter.acquire(tier_name, Limits(tier.rpm, tier.tpm), estimate)
    if before_call is not None:
        before_call()
    try:
        completion = call_tier(tier, tier_name, request)
    except CallError as error:
        if error.status == AttemptStatus.RATE_LIMITED:
            limiter.cooldown(tier_name, error.retry_after or DEFAULT_COOLDOWN_S)
        limiter.reconcile(tier_name, ticket, 0 if error.http_status else estimate)
        raise
    limiter.reconcile(tier_name, ticket, completion.prompt_tokens + completion.completion_tokens)
    return completion
