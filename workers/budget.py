"""Budget caps: a job's answer calls never start when they could take it past its cap
(`submit --max-cost USD`, `[teacher]` / `[router]` `max_cost_usd`, and a tier's
`max_cost_usd` per job), across every worker process and machine together.

Before each call its cost is estimated as an upper bound where the request allows one —
the prompt's tokens (`workers.tokens`) and `max_tokens` of answer (256 when the job sets
none), at the tier's prices — and *reserved* in Redis, atomically with the check, in one
Lua script (the style of the rate limiter's GCRA script, `workers.ratelimit`):

* spent + estimate > cap: the call could pass the cap even if every call in flight came
  back free; it is refused (`BudgetSpent`), and its prompt ends `cancelled`, reason budget;
* spent + reserved + estimate > cap: it might fit once the calls in flight are settled;
  it waits (a timer, no thread) and asks again;
* otherwise the estimate is reserved, and after the call replaced by the usage the
  provider returned (`settle`).

So the overshoot is bounded by how far the calls in flight beat their estimates: none
with `max_tokens` set and an exact token count, at most the in-flight calls' answers past
256 tokens without it (measured in bench/budget.py).

Redis flushed mid-job: the next reserve finds no budget and re-reads what the job has
spent from the ledger (its committed answer attempts), under a new epoch. A call reserved
before the flush that settles after it adds its cost to the new epoch (the ledger did not
have it yet) but not to its reservations; the calls in flight at the flush are what the
new epoch cannot see, so the cap can be passed by at most what those cost."""

import asyncio
import random
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from models.savings import BUDGET_PREFIX
from workers.chat import ChatRequest
from workers.settings import TierConfig
from workers.tokens import DEFAULT_COMPLETION_ESTIMATE, chat_tokens, counter_for

# Amounts are integers of nano-dollars in Redis: exact sums, and HINCRBY, at any scale a
# budget has (2^53 nano-dollars is nine million dollars).
NANO = 1_000_000_000
PREFIX = "distillery:budget"
TTL_S = 7 * 24 * 3600  # a budget unused this long is forgotten (re-read from the ledger)
# How long a call that might fit waits for the calls in flight before asking again.
WAIT_S = 0.05

# KEYS: the caps' hashes (fields spent, reserved, epoch). ARGV: estimate, then each cap.
# Returns {1, epoch...} reserved; {0, i} cap i can never fit it; {2, i} wait for cap i;
# {-1, i} cap i is not in Redis (never seeded, or flushed): seed it from the ledger.
RESERVE_LUA = """
local estimate = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then return {-1, i} end
end
local wait = 0
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[i + 1])
  local state = redis.call('HMGET', key, 'spent', 'reserved')
  local spent, reserved = tonumber(state[1]) or 0, tonumber(state[2]) or 0
  if spent + estimate > cap then return {0, i} end
  if spent + reserved + estimate > cap then wait = i end
end
if wait > 0 then return {2, wait} end
local epochs = {1}
for i, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 'reserved', estimate)
  redis.call('EXPIRE', key, tonumber(ARGV[#ARGV]))
  epochs[#epochs + 1] = redis.call('HGET', key, 'epoch')
end
return epochs
"""

# KEYS: the caps' hashes. ARGV: estimate, cost, then the epoch each was reserved under.
# The cost counts in every epoch; the reservation is released only in the epoch that holds it.
SETTLE_LUA = """
local estimate, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'spent', cost)
    if redis.call('HGET', key, 'epoch') == ARGV[i + 2] then
      if redis.call('HINCRBY', key, 'reserved', -estimate) < 0 then
        redis.call('HSET', key, 'reserved', 0)
      end
    end
  end
end
return 1
"""

# KEYS[1]: a cap's hash. ARGV: spent so far (from the ledger), a new epoch, ttl. The first
# seed wins: workers that found the budget missing at once all try, one writes.
SEED_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0, 'epoch', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# KEYS[1]: a cap's hash: its spent, or nil.
SPENT_LUA = "return redis.call('HGET', KEYS[1], 'spent')"


@dataclass(frozen=True, slots=True)
class Cap:
    """One cap a call counts against: the job's whole budget ("all") or one tier's."""

    name: str  # "all" or "tier:<name>"
    usd: float

    @property
    def tier(self) -> str | None:
        return self.name.removeprefix("tier:") if self.name.startswith("tier:") else None


class BudgetSpent(Exception):
    """The call could take its job past a cap: not made; its prompt ends cancelled."""

    def __init__(self, job_id: int, cap: Cap, estimate_usd: float) -> None:
        which = "the job's" if cap.tier is None else f"tier {cap.tier!r}'s"
        super().__init__(
            f"{BUDGET_PREFIX} {which} cap of ${cap.usd:g} is spent (this call could cost "
            f"${estimate_usd:.6f} more)"
        )
        self.job_id = job_id
        self.cap = cap


def call_cost_estimate(tier: TierConfig, request: ChatRequest) -> float:
    """What a call may cost: its prompt's tokens and `max_tokens` (or 256) of answer."""
    prompt = chat_tokens(request.messages, counter_for(tier))
    return tier.cost_usd(prompt, request.max_tokens or DEFAULT_COMPLETION_ESTIMATE)


def nano(usd: float) -> int:
    return round(usd * NANO)


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation: what `settle` needs."""

    keys: list[str]
    estimate: int
    epochs: list[str]


# What the job has spent per cap, from the ledger (seeding a missing budget).
LedgerSpend = Callable[[int], Awaitable[dict[str, float]]]


class Budgets(Protocol):
    async def reserve(self, job_id: int, caps: list[Cap], estimate_usd: float) -> Hold: ...

    async def settle(self, hold: Hold, cost_usd: float) -> None: ...

    async def spent(self, job_id: int, cap: Cap) -> float | None: ...

    async def close(self) -> None: ...


def budget_key(job_id: int, cap: Cap) -> str:
    # One hash slot per job ({job:ID}), so a reserve over several caps runs on Redis Cluster.
    return f"{PREFIX}:{{job:{job_id}}}:{cap.name}"


class RedisBudgets:
    """The caps shared through Redis (`redis.asyncio`); open one per event loop."""

    def __init__(self, client: Any, ledger_spend: LedgerSpend) -> None:
        self.client = client
        self.ledger_spend = ledger_spend
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._seed = client.register_script(SEED_LUA)
        self._spent = client.register_script(SPENT_LUA)

    async def reserve(self, job_id: int, caps: list[Cap], estimate_usd: float) -> Hold:
        keys = [budget_key(job_id, cap) for cap in caps]
        estimate = nano(estimate_usd)
        args = [estimate, *(nano(cap.usd) for cap in caps), TTL_S]
        while True:
            verdict, *rest = await self._reserve(keys=keys, args=args)
            verdict = int(verdict)
            if verdict == 1:
                return Hold(keys, estimate, [_text(epoch) for epoch in rest])
            cap = caps[int(rest[0]) - 1]
            if verdict == 0:
                raise BudgetSpent(job_id, cap, estimate_usd)
            if verdict == -1:
                await self._seed_from_ledger(job_id, cap)
            else:
                await asyncio.sleep(WAIT_S * random.uniform(0.5, 1.5))

    async def _seed_from_ledger(self, job_id: int, cap: Cap) -> None:
        spent = (await self.ledger_spend(job_id)).get(cap.name, 0.0)
        epoch = secrets.token_hex(8)
        await self._seed(keys=[budget_key(job_id, cap)], args=[nano(spent), epoch, TTL_S])

    async def settle(self, hold: Hold, cost_usd: float) -> None:
        await self._settle(keys=hold.keys, args=[hold.estimate, nano(cost_usd), *hold.epochs])

    async def spent(self, job_id: int, cap: Cap) -> float | None:
        """What Redis counts as spent against `cap` (None: not in Redis)."""
        value = await self._spent(keys=[budget_key(job_id, cap)])
        return None if value is None else int(value) / NANO

    async def close(self) -> None:
        await self.client.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Budget:
    spent: int = 0
    reserved: int = 0


class LocalBudgets:
    """The same rule in one process (the embedded mode without Redis): RESERVE_LUA and
    SETTLE_LUA under a lock, seeded from the ledger the first time a job asks."""

    def __init__(self, ledger_spend: LedgerSpend) -> None:
        self.ledger_spend = ledger_spend
        self.lock = threading.Lock()
        self.budgets: dict[str, _Budget] = {}

    async def reserve(self, job_id: int, caps: list[Cap], estimate_usd: float) -> Hold:
        keys = [budget_key(job_id, cap) for cap in caps]
        estimate = nano(estimate_usd)
        while True:
            missing = [cap for key, cap in zip(keys, caps, strict=True) if key not in self.budgets]
            if missing:
                spend = await self.ledger_spend(job_id)
                with self.lock:
                    for cap in missing:
                        self.budgets.setdefault(
                            budget_key(job_id, cap), _Budget(nano(spend.get(cap.name, 0.0)))
                        )
            verdict, cap = self._try(keys, caps, estimate)
            if verdict == 1:
                return Hold(keys, estimate, ["local"] * len(keys))
            if verdict == 0:
                raise BudgetSpent(job_id, cap, estimate_usd)
            await asyncio.sleep(WAIT_S * random.uniform(0.5, 1.5))

    def _try(self, keys: list[str], caps: list[Cap], estimate: int) -> tuple[int, Cap]:
        with self.lock:
            wait: Cap | None = None
            for key, cap in zip(keys, caps, strict=True):
                budget = self.budgets[key]
                if budget.spent + estimate > nano(cap.usd):
                    return 0, cap
                if budget.spent + budget.reserved + estimate > nano(cap.usd):
                    wait = cap
            if wait is not None:
                return 2, wait
            for key in keys:
                self.budgets[key].reserved += estimate
            return 1, caps[0]

    async def settle(self, hold: Hold, cost_usd: float) -> None:
        with self.lock:
            for key in hold.keys:
                budget = self.budgets.setdefault(key, _Budget())
                budget.spent += nano(cost_usd)
                budget.reserved = max(0, budget.reserved - hold.estimate)

    async def spent(self, job_id: int, cap: Cap) -> float | None:
        budget = self.budgets.get(budget_key(job_id, cap))
        return None if budget is None else budget.spent / NANO

    async def close(self) -> None:
        pass


def job_caps(max_cost_usd: float | None, tier_caps: dict[str, float], tier: str) -> list[Cap]:
    """The caps a call on `tier` counts against."""
    caps = [Cap("all", max_cost_usd)] if max_cost_usd is not None else []
    if tier in tier_caps:
        caps.append(Cap(f"tier:{tier}", tier_caps[tier]))
    return caps


@dataclass(frozen=True, slots=True)
class Spend:
    """One call's budget: its job and caps; what `Caller.call` reserves and settles."""

    budgets: Budgets
    job_id: int
    caps: list[Cap]

    async def reserve(self, estimate_usd: float) -> Hold:
        return await self.budgets.reserve(self.job_id, self.caps, estimate_usd)

    async def settle(self, hold: Hold, cost_usd: float) -> None:
        await self.budgets.settle(hold, cost_usd)


def open_budgets(redis_url: str | None, ledger_spend: LedgerSpend) -> Budgets:
    """Shared through Redis when there is one; in-process for the embedded mode. Open one
    per event loop, in it."""
    if not redis_url:
        return LocalBudgets(ledger_spend)
    import redis.asyncio

    return RedisBudgets(redis.asyncio.Redis.from_url(redis_url), ledger_spend)
