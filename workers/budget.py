"""Budget caps: a job's answer calls never start when they could take it past its cap
(`submit --max-cost USD`, `[teacher]` / `[router]` `max_cost_usd`, and a tier's
`max_cost_usd` per job), across every worker process and machine together.

Before each call its cost is estimated as an upper bound where the request allows one —
the prompt's tokens (`workers.tokens`) and `max_tokens` of answer (256 when the job sets
none), at the tier's prices. Before the rate limiter is asked, a *check* refuses a call that
can never fit (a refused call takes no slot of the tier's schedule); right before the
request goes out it is *reserved* in Redis, atomically with the check, in one Lua script
(the style of the rate limiter's GCRA script, `workers.ratelimit`):

* spent + estimate > cap: the call could pass the cap even if every call in flight came
  back free; it is refused (`BudgetSpent`), and its prompt ends `cancelled`, reason budget;
* spent + reserved + estimate > cap: it might fit once the calls in flight are settled;
  it waits (a timer, no thread) and asks again;
* otherwise the estimate is reserved, and after the call replaced by the usage the
  provider returned (`settle`).

A reservation expires by itself `HOLD_MARGIN_S` after its call's timeout: a worker killed
(or cut off from Redis) between reserve and settle cannot hold the job's budget forever.

So the overshoot is bounded by how far the calls in flight beat their estimates: none
with `max_tokens` set and an exact token count, at most the in-flight calls' answers past
256 tokens without it (measured in bench/budget.py).

Redis flushed mid-job: the next check finds no budget and re-reads what the job has spent
from the ledger (its committed answer attempts). A call reserved before the flush that
settles after it adds its cost (the ledger did not have it yet); its reservation is gone
with the flush. The calls in flight at the flush are what the new budget cannot see, so
the cap can be passed by at most what those cost."""

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
# A reservation outlives its call by this much at most; then it is released by itself, so
# a worker that died (or lost Redis) between reserve and settle cannot block the job.
HOLD_MARGIN_S = 30.0
BUDGET_CONNECTIONS = 16  # per event loop

# Each cap is a hash (spent, reserved, and h:<hold id> = amount per reservation) and a
# sorted set of its reservations by expiry (KEYS: hash, set, hash, set, ...). ARGV: mode
# (1 reserve, 0 only check), estimate, hold id, hold seconds, key ttl, then each cap.
# Returns 1 reserved (or fits); {0, i} cap i can never fit it; {2, i} wait for cap i;
# {-1, i} cap i is not in Redis (never seeded, or flushed): seed it from the ledger.
RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local reserve, estimate, hold = ARGV[1] == '1', tonumber(ARGV[2]), ARGV[3]
local hold_s, key_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local caps = #KEYS / 2
for i = 1, caps do
  if redis.call('EXISTS', KEYS[2 * i - 1]) == 0 then return {-1, i} end
end
local wait = 0
for i = 1, caps do
  local state, holds = KEYS[2 * i - 1], KEYS[2 * i]
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', holds, '-inf', now)) do
    local amount = tonumber(redis.call('HGET', state, 'h:' .. old)) or 0
    redis.call('HINCRBY', state, 'reserved', -amount)
    redis.call('HDEL', state, 'h:' .. old)
    redis.call('ZREM', holds, old)
  end
  local cap = tonumber(ARGV[5 + i])
  local values = redis.call('HMGET', state, 'spent', 'reserved')
  local spent, reserved = tonumber(values[1]) or 0, tonumber(values[2]) or 0
  if spent + estimate > cap then return {0, i} end
  if spent + reserved + estimate > cap then wait = i end
end
if not reserve then return {1, 0} end
if wait > 0 then return {2, wait} end
for i = 1, caps do
  local state, holds = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('HINCRBY', state, 'reserved', estimate)
  redis.call('HSET', state, 'h:' .. hold, estimate)
  redis.call('ZADD', holds, now + hold_s, hold)
  redis.call('EXPIRE', state, key_ttl)
  redis.call('EXPIRE', holds, key_ttl)
end
return {1, 0}
"""

# KEYS: as for RESERVE_LUA. ARGV: cost, hold id. The cost counts in any budget there is; the
# reservation is released if it is still held (not expired, not lost with a flush).
SETTLE_LUA = """
local cost, hold = tonumber(ARGV[1]), ARGV[2]
for i = 1, #KEYS / 2 do
  local state, holds = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('EXISTS', state) == 1 then
    redis.call('HINCRBY', state, 'spent', cost)
    local amount = tonumber(redis.call('HGET', state, 'h:' .. hold))
    if amount then
      redis.call('HINCRBY', state, 'reserved', -amount)
      redis.call('HDEL', state, 'h:' .. hold)
      redis.call('ZREM', holds, hold)
    end
  end
end
return 1
"""

# KEYS[1]: a cap's hash. ARGV: spent so far (from the ledger), ttl. The first seed wins:
# workers that found the budget missing at once all try, one writes.
SEED_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
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
    hold_id: str
    estimate: int


# What the job has spent per cap, from the ledger (seeding a missing budget).
LedgerSpend = Callable[[int], Awaitable[dict[str, float]]]


class Budgets(Protocol):
    async def check(self, job_id: int, caps: list[Cap], estimate_usd: float) -> None:
        """Raise `BudgetSpent` if the call could pass a cap even were nothing in flight."""
        ...

    async def reserve(
        self, job_id: int, caps: list[Cap], estimate_usd: float, hold_s: float
    ) -> Hold:
        """Reserve the estimate in every cap (waiting while calls in flight might free
        enough), held at most `hold_s`; `BudgetSpent` if it can never fit."""
        ...

    async def settle(self, hold: Hold, cost_usd: float) -> None: ...

    async def spent(self, job_id: int, cap: Cap) -> float | None: ...

    async def close(self) -> None: ...


def budget_keys(job_id: int, caps: list[Cap]) -> list[str]:
    # One hash slot per job ({job:ID}), so a script over several caps runs on Redis Cluster.
    keys = []
    for cap in caps:
        state = f"{PREFIX}:{{job:{job_id}}}:{cap.name}"
        keys += [state, f"{state}:holds"]
    return keys


class RedisBudgets:
    """The caps shared through Redis (`redis.asyncio`); open one per event loop."""

    def __init__(self, client: Any, ledger_spend: LedgerSpend) -> None:
        self.client = client
        self.ledger_spend = ledger_spend
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._seed = client.register_script(SEED_LUA)
        self._spent = client.register_script(SPENT_LUA)

    async def check(self, job_id: int, caps: list[Cap], estimate_usd: float) -> None:
        await self._ask(job_id, caps, estimate_usd, reserve=False, hold_s=0.0)

    async def reserve(
        self, job_id: int, caps: list[Cap], estimate_usd: float, hold_s: float
    ) -> Hold:
        return await self._ask(job_id, caps, estimate_usd, reserve=True, hold_s=hold_s)

    async def _ask(
        self, job_id: int, caps: list[Cap], estimate_usd: float, *, reserve: bool, hold_s: float
    ) -> Hold:
        keys = budget_keys(job_id, caps)
        hold = Hold(keys, secrets.token_hex(8), nano(estimate_usd))
        args = [int(reserve), hold.estimate, hold.hold_id, hold_s, TTL_S]
        args += [nano(cap.usd) for cap in caps]
        while True:
            reply = await self._reserve(keys=keys, args=args)
            verdict, which = int(reply[0]), int(reply[1])
            if verdict == 1:
                return hold
            cap = caps[which - 1]
            if verdict == 0:
                raise BudgetSpent(job_id, cap, estimate_usd)
            if verdict == -1:
                await self._seed_from_ledger(job_id, cap)
            else:
                await asyncio.sleep(WAIT_S * random.uniform(0.5, 1.5))

    async def _seed_from_ledger(self, job_id: int, cap: Cap) -> None:
        spent = (await self.ledger_spend(job_id)).get(cap.name, 0.0)
        state = budget_keys(job_id, [cap])[0]
        await self._seed(keys=[state], args=[nano(spent), TTL_S])

    async def settle(self, hold: Hold, cost_usd: float) -> None:
        await self._settle(keys=hold.keys, args=[nano(cost_usd), hold.hold_id])

    async def spent(self, job_id: int, cap: Cap) -> float | None:
        """What Redis counts as spent against `cap` (None: not in Redis)."""
        value = await self._spent(keys=budget_keys(job_id, [cap])[:1])
        return None if value is None else int(value) / NANO

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class _Budget:
    spent: int = 0
    reserved: int = 0


class LocalBudgets:
    """The same rule in one process (the embedded mode without Redis), under a lock, seeded
    from the ledger the first time a job asks. A reservation lives as long as the process,
    which always settles it (in a `finally`), so it needs no expiry."""

    def __init__(self, ledger_spend: LedgerSpend) -> None:
        self.ledger_spend = ledger_spend
        self.lock = threading.Lock()
        self.budgets: dict[str, _Budget] = {}

    async def check(self, job_id: int, caps: list[Cap], estimate_usd: float) -> None:
        await self._ask(job_id, caps, estimate_usd, reserve=False)

    async def reserve(
        self, job_id: int, caps: list[Cap], estimate_usd: float, hold_s: float
    ) -> Hold:
        return await self._ask(job_id, caps, estimate_usd, reserve=True)

    async def _ask(
        self, job_id: int, caps: list[Cap], estimate_usd: float, *, reserve: bool
    ) -> Hold:
        keys = budget_keys(job_id, caps)[::2]
        hold = Hold(keys, "local", nano(estimate_usd))
        missing = [cap for key, cap in zip(keys, caps, strict=True) if key not in self.budgets]
        if missing:
            spend = await self.ledger_spend(job_id)
            with self.lock:
                for key, cap in zip(keys, caps, strict=True):
                    self.budgets.setdefault(key, _Budget(nano(spend.get(cap.name, 0.0))))
        while True:
            verdict, cap = self._try(keys, caps, hold.estimate, reserve)
            if verdict == 1:
                return hold
            if verdict == 0:
                raise BudgetSpent(job_id, cap, estimate_usd)
            await asyncio.sleep(WAIT_S * random.uniform(0.5, 1.5))

    def _try(
        self, keys: list[str], caps: list[Cap], estimate: int, reserve: bool
    ) -> tuple[int, Cap]:
        """RESERVE_LUA's rule."""
        with self.lock:
            wait: Cap | None = None
            for key, cap in zip(keys, caps, strict=True):
                budget = self.budgets[key]
                if budget.spent + estimate > nano(cap.usd):
                    return 0, cap
                if budget.spent + budget.reserved + estimate > nano(cap.usd):
                    wait = cap
            if not reserve:
                return 1, caps[0]
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
        budget = self.budgets.get(budget_keys(job_id, [cap])[0])
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

    async def check(self, estimate_usd: float) -> None:
        await self.budgets.check(self.job_id, self.caps, estimate_usd)

    async def reserve(self, estimate_usd: float, hold_s: float) -> Hold:
        return await self.budgets.reserve(self.job_id, self.caps, estimate_usd, hold_s)

    async def settle(self, hold: Hold, cost_usd: float) -> None:
        await self.budgets.settle(hold, cost_usd)


def open_budgets(redis_url: str | None, ledger_spend: LedgerSpend) -> Budgets:
    """Shared through Redis when there is one; in-process for the embedded mode. Open one
    per event loop, in it."""
    if not redis_url:
        return LocalBudgets(ledger_spend)
    import redis.asyncio

    # A blocking pool, as the rate limiter's: hundreds of calls in flight reserve and settle
    # at once; they queue for a connection instead of failing with MaxConnectionsError.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        redis_url, max_connections=BUDGET_CONNECTIONS, timeout=None
    )
    return RedisBudgets(redis.asyncio.Redis.from_pool(pool), ledger_spend)
