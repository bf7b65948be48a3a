"""The one way anything calls a model: wait for the tier's global rate limit, make the HTTP
call, reconcile the token estimate with the real usage (or pause the tier on a 429), and
retry what may pass on a retry. Answers, the llm router, and any future caller (the gateway,
a judge, the training backend's evaluation) go through `Caller.call`.

A `Caller` lives in one event loop (its aiohttp sessions and Redis connections belong to
it): a worker opens one per process at start-up (`workers.context`), a one-off command opens
one for the duration of its work (`run_calls`)."""

import atexit
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from models import AttemptStatus
from workers.budget import HOLD_MARGIN_S, Hold, Spend, call_cost_estimate
from workers.callloop import call_loop
from workers.chat import CallError, ChatRequest, Completion
from workers.http_client import ChatClient
from workers.ratelimit import Limits, RateLimiter, open_rate_limiter
from workers.retry import RetryPolicy, call_with_retries
from workers.settings import Settings, TierConfig
from workers.tokens import call_estimate, chat_tokens, counter_for

T = TypeVar("T")
# A 429 without Retry-After still pauses the tier, briefly.
DEFAULT_COOLDOWN_S = 1.0

OnFailure = Callable[[CallError], None]
BeforeCall = Callable[[], Awaitable[None]]


def _ignore(_: CallError) -> None:
    pass


def retry_policy(tier: TierConfig) -> RetryPolicy:
    return RetryPolicy(tier.max_retries, tier.backoff_base_s, tier.backoff_max_s)


class Caller:
    def __init__(self, *, client: ChatClient, limiter: RateLimiter) -> None:
        self.client = client
        self.limiter = limiter

    @classmethod
    def open(cls, settings: Settings) -> "Caller":
        """A caller for the running event loop (call it from inside that loop)."""
        return cls(client=ChatClient(), limiter=open_rate_limiter(settings.redis_url))

    async def close(self) -> None:
        await self.client.close()
        await self.limiter.close()

    async def call(
        self,
        tier: TierConfig,
        request: ChatRequest,
        *,
        on_failure: OnFailure = _ignore,
        before_call: BeforeCall | None = None,
        max_wait_s: float | None = None,
        hold: int | None = None,
        spend: Spend | None = None,
    ) -> Completion:
        """The answer, after the tier's retries; `on_failure` sees each failed try as it
        happens (to record it), and the last failure is raised. With `max_wait_s` (a
        waiting caller: the gateway), neither the limits nor a 429 keep it waiting longer
        than that: `NotSent`, or the 429 itself, is raised instead. With `hold`, the answer
        is streamed and returned once its first `hold` tokens came (the retries cover
        only that far): its `stream` holds the rest (`workers.held_stream`). With `spend`,
        each try first reserves its estimated cost in the job's budget (`BudgetSpent` if it
        could pass a cap) and settles it with the real cost after. A held stream's cost is
        known only when it ends, so the two do not combine (the gateway has no budgets)."""
        if hold is not None and spend is not None:
            raise ValueError("a held stream cannot be budgeted: its cost comes at its end")

        async def once() -> Completion:
            if spend is None:
                return await self.limited(
                    tier, request, before_call=before_call, max_wait_s=max_wait_s, hold=hold
                )
            return await self.budgeted(tier, request, spend, before_call, max_wait_s)

        return await call_with_retries(once, retry_policy(tier), on_failure=on_failure)

    async def budgeted(
        self,
        tier: TierConfig,
        request: ChatRequest,
        spend: Spend,
        before_call: BeforeCall | None,
        max_wait_s: float | None,
    ) -> Completion:
        """`limited`, within the job's budget. Checked before the limiter is asked (a call
        the budget can no longer pay takes no slot of the tier's schedule), reserved right
        before the request goes out (held for at most the call's timeout and a margin) and
        settled with the cost of the usage returned; a try that got no HTTP answer may have
        been billed, so it keeps its estimate, and one that never went out costs nothing."""
        estimate = call_cost_estimate(tier, request)
        await spend.check(estimate)
        hold: Hold | None = None

        async def reserve() -> None:
            nonlocal hold
            if before_call is not None:
                await before_call()
            hold = await spend.reserve(estimate, tier.timeout_s + HOLD_MARGIN_S)

        cost = 0.0
        try:
            completion = await self.limited(
                tier, request, before_call=reserve, max_wait_s=max_wait_s
            )
        except CallError as error:
            cost = estimate if not error.http_status else 0.0
            raise
        else:
            cost = tier.cost_usd(completion.prompt_tokens, completion.completion_tokens)
            return completion
        finally:
            if hold is not None:
                await spend.settle(hold, cost)

    async def limited(
        self,
        tier: TierConfig,
        request: ChatRequest,
        *,
        before_call: BeforeCall | None = None,
        max_wait_s: float | None = None,
        hold: int | None = None,
    ) -> Completion:
        """One try within the tier's limits; `before_call` runs after the wait for capacity,
        right before the request goes out (e.g. a cancellation check)."""
        estimate = call_estimate(tier, request.messages, request.max_tokens)
        limits = Limits(tier.rpm, tier.tpm, tier.burst_s)
        ticket = await self.limiter.acquire(tier.name, limits, estimate, max_wait_s=max_wait_s)
        if before_call is not None:
            await before_call()
        try:
            if hold is None:
                completion = await self.client.call(tier, request)
            else:
                prompt = chat_tokens(request.messages, counter_for(tier))
                completion = await self.client.stream(
                    tier, request, hold=hold, prompt_estimate=prompt
                )
        except CallError as error:
            if error.status == AttemptStatus.RATE_LIMITED:
                pause = error.retry_after or DEFAULT_COOLDOWN_S
                await self.limiter.cooldown(tier.name, pause)
                if max_wait_s is not None and pause > max_wait_s:
                    error.retryable = False  # its caller will not wait for the retry
            # An HTTP answer (even an error) was not a generation; no answer may have been one.
            await self.limiter.reconcile(tier.name, ticket, 0 if error.http_status else estimate)
            raise
        if completion.stream is not None:  # settled when the stream ends, however it ends

            async def settle(tokens: int) -> None:
                await self.limiter.reconcile(tier.name, ticket, tokens)

            completion.stream.on_end = settle
            if completion.stream.ended:
                await completion.stream.aclose()
            return completion
        await self.limiter.reconcile(tier.name, ticket, completion.tokens)
        return completion


def run_calls(settings: Settings, work: Callable[[Caller], Awaitable[T]]) -> T:
    """For code outside any event loop (a CLI command): run `work` with a caller of its own
    in this process's call loop, and close the caller when it is done."""

    async def with_caller() -> T:
        caller = Caller.open(settings)
        try:
            return await work(caller)
        finally:
            await caller.close()

    return call_loop().run(with_caller())


_standalone: dict[str | None, Caller] = {}  # by Redis URL: all a caller depends on
_standalone_lock = threading.Lock()


def standalone_caller(settings: Settings) -> Caller:
    """A caller on this process's shared call loop, for one-off commands that build a router
    and decide with it from synchronous code (router eval, cost simulate). Closed when the
    process exits; a worker uses its context's caller instead."""
    with _standalone_lock:
        if settings.redis_url not in _standalone:
            loop = call_loop()

            async def open_caller() -> Caller:
                return Caller.open(settings)

            caller = loop.run(open_caller())
            _standalone[settings.redis_url] = caller
            atexit.register(lambda: loop.run(caller.close()))
        return _standalone[settings.redis_url]
