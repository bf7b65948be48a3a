"""Requests-per-minute and tokens-per-minute limits over a sliding 60-second window.

Not thread-safe on its own: `SimState` calls it under its lock.
"""

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass(slots=True)
class SlidingWindow:
    """Amounts admitted during the last WINDOW_S seconds, oldest first."""

    entries: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0

    def expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - WINDOW_S:
            _, amount = self.entries.popleft()
            self.total -= amount

    def seconds_until_room(self, now: float, amount: int, limit: int) -> float:
        """0 when `amount` fits now, else how long until enough old entries expire.
        An empty window always has room, so one request larger than the whole limit is
        served alone instead of being refused forever."""
        self.expire(now)
        if self.total == 0 or self.total + amount <= limit:
            return 0.0
        still_counted = self.total
        for started, old_amount in self.entries:
            still_counted -= old_amount
            if still_counted == 0 or still_counted + amount <= limit:
                return started + WINDOW_S - now
        return WINDOW_S  # unreachable: the loop ends with an empty window at the latest

    def add(self, now: float, amount: int) -> None:
        self.entries.append((now, amount))
        self.total += amount


@dataclass(frozen=True, slots=True)
class LimitRefusal:
    kind: str  # "requests" or "tokens"
    limit: int
    used: int
    requested: int
    wait_s: float

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1: clients sleep on it, and 0 would mean "hammer me"."""
        return str(max(1, math.ceil(self.wait_s)))

    @property
    def message(self) -> str:
        unit = "RPM" if self.kind == "requests" else "TPM"
        return (
            f"Rate limit reached for {self.kind} per min ({unit}): Limit {self.limit}, "
            f"Used {self.used}, Requested {self.requested}. "
            f"Please try again in {self.retry_after_header}s."
        )


@dataclass(slots=True)
class ModelLimits:
    """One model name's windows; admission is all-or-nothing across both."""

    requests: SlidingWindow = field(default_factory=SlidingWindow)
    tokens: SlidingWindow = field(default_factory=SlidingWindow)

    def admit(
        self, now: float, tokens: int, rpm: int | None, tpm: int | None
    ) -> LimitRefusal | None:
        refusal = _check(self.requests, "requests", now, 1, rpm) or _check(
            self.tokens, "tokens", now, tokens, tpm
        )
        if refusal is None:
            self.requests.add(now, 1)
            self.tokens.add(now, tokens)
        return refusal


def _check(
    window: SlidingWindow, kind: str, now: float, amount: int, limit: int | None
) -> LimitRefusal | None:
    if limit is None:
        window.expire(now)  # keep the window short even while unlimited
        return None
    wait = window.seconds_until_room(now, amount, limit)
    if wait <= 0:
        return None
    return LimitRefusal(kind, limit, window.total, amount, wait)
