"""Requests-per-minute and tokens-per-minute limits, enforced one of two ways:

* a sliding 60-second window (the default): no more than the limit in any 60 s;
* smoothed (`burst_s` set), as providers enforce them: 1,200 RPM is one request every 50 ms,
  and a request may come up to `burst_s` seconds ahead of that steady schedule (GCRA, the
  generic cell rate algorithm; a token bucket holding `burst_s` worth of the limit). A
  minute's budget sent as a burst is refused, however few requests the minute held.

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


@dataclass(slots=True)
class SmoothedRate:
    """A limit as a steady rate: `tat` (theoretical arrival time) is when the schedule
    expects the next request; one that comes more than `burst_s` before it is refused."""

    tat: float = 0.0

    def seconds_until_room(self, now: float, burst_s: float) -> float:
        return max(0.0, self.tat - burst_s - now)

    def debt(self, now: float, limit: int) -> int:
        """How far ahead of the schedule the limit is used, in its units (for the message)."""
        return round(max(0.0, self.tat - now) * limit / WINDOW_S)

    def add(self, now: float, amount: int, limit: int) -> None:
        self.tat = max(self.tat, now) + amount * WINDOW_S / limit


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
    """One model name's windows or rates; admission is all-or-nothing across both."""

    requests: SlidingWindow = field(default_factory=SlidingWindow)
    tokens: SlidingWindow = field(default_factory=SlidingWindow)
    request_rate: SmoothedRate = field(default_factory=SmoothedRate)
    token_rate: SmoothedRate = field(default_factory=SmoothedRate)

    def admit(
        self,
        now: float,
        tokens: int,
        rpm: int | None,
        tpm: int | None,
        burst_s: float | None = None,
    ) -> LimitRefusal | None:
        if burst_s is not None:
            return self._admit_smoothed(now, tokens, rpm, tpm, burst_s)
        refusal = _check(self.requests, "requests", now, 1, rpm) or _check(
            self.tokens, "tokens", now, tokens, tpm
        )
        if refusal is None:
            self.requests.add(now, 1)
            self.tokens.add(now, tokens)
        return refusal

    def _admit_smoothed(
        self, now: float, tokens: int, rpm: int | None, tpm: int | None, burst_s: float
    ) -> LimitRefusal | None:
        refusal = _check_rate(self.request_rate, "requests", now, 1, rpm, burst_s) or _check_rate(
            self.token_rate, "tokens", now, tokens, tpm, burst_s
        )
        if refusal is None:
            if rpm is not None:
                self.request_rate.add(now, 1, rpm)
            if tpm is not None:
                self.token_rate.add(now, tokens, tpm)
        return refusal


def _check_rate(
    rate: SmoothedRate, kind: str, now: float, amount: int, limit: int | None, burst_s: float
) -> LimitRefusal | None:
    if limit is None:
        return None
    wait = rate.seconds_until_room(now, burst_s)
    if wait <= 0:
        return None
    return LimitRefusal(kind, limit, rate.debt(now, limit), amount, wait)


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
