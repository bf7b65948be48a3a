"""A value per key, read at most every `ttl_s` and shared by everyone asking meanwhile:
one read answers all the calls in flight that want it (a job's status before each call,
a tier's 429 cooldown). For the call loop only (asyncio, one thread)."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.known: dict[K, tuple[float, V]] = {}  # key -> (read at, value)
        self.reading: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        known = self.known.get(key)
        if known is not None and time.monotonic() - known[0] < self.ttl_s:
            return known[1]
        if key not in self.reading:  # one read per key at a time, shared by all who wait
            started = time.monotonic()
            pending = asyncio.ensure_future(read())
            self.reading[key] = pending
            pending.add_done_callback(lambda done: self._remember(key, started, done))
        return await asyncio.shield(self.reading[key])

    def put(self, key: K, value: V) -> None:
        """A value learnt first-hand (e.g. our own 429), fresh from now."""
        self.known[key] = (time.monotonic(), value)

    def _remember(self, key: K, started: float, done: "asyncio.Future[V]") -> None:
        del self.reading[key]
        if not done.cancelled() and done.exception() is None:
            # Aged from when the read started: the value is at least that old.
            self.known[key] = (started, done.result())
