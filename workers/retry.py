"""Retries with exponential backoff and full jitter, honouring the provider's Retry-After."""

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from workers.chat import CallError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 4
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # Jitter on top, so a tier's workers do not all come back in the same instant.
            return min(self.max_s, retry_after) + random.uniform(0, self.base_s)
        return random.uniform(0, min(self.max_s, self.base_s * 2**retry))


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_failure: Callable[[CallError], None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await `call` until it succeeds; report each failure; re-raise the last one."""
    retry = 0
    while True:
        try:
            return await call()
        except CallError as error:
            on_failure(error)
            if not error.retryable or retry >= policy.max_retries:
                raise
            await sleep(policy.delay(retry, error.retry_after))
            retry += 1
