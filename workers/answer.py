"""Answering prompts on one tier — the step both job modes share.

Teacher jobs call their teacher tier and keep the answer. Route jobs ask for logprobs, and
a doubtful answer or a call that still fails after its retries escalates to the next tier
of the job's fallback chain (a `fallbacks` row, then a call there) instead of ending the
prompt; only the last tier's failure fails it.

A message's prompts are loaded with three queries (`load_work`) and answered concurrently
as coroutines in the worker's call loop (`answer_message`); what they produce goes to the
ledger writer as `Record`s (`workers.ledger`), committed in groups. The step returns the
committed records; the task (`workers.tasks`) sends what follows from them.

Before a call, the step asks the response cache (`workers.response_cache`): a request
answered before becomes a `cached` attempt and no call. A call of a job with a budget
(`workers.budget`) is reserved against it first; one that could pass the cap is not made,
and its prompt ends cancelled, reason budget.
"""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from models import FallbackReason, PromptStatus
from models.outcomes import Record
from models.types import utcnow
from models.work import open_prompts
from workers.attempts import attempt_from_cache, attempt_from_completion, attempt_from_error
from workers.budget import BudgetSpent, Spend, job_caps
from workers.chat import CallError, ChatRequest, Completion, NotSent
from workers.context import WorkerContext
from workers.job_settings import AnyJobSettings, load_job_settings
from workers.response_cache import CachedAnswer, cache_key, cache_row, caches
from workers.settings import TierConfig

# How an answer becomes its attempt row: a call's (`attempt_from_completion`), or the cache's.
AttemptOf = Callable[..., dict[str, Any]]


@dataclass(frozen=True, slots=True)
class WorkItem:
    prompt_id: int
    job_id: int
    messages: list[dict[str, Any]]
    job: AnyJobSettings
    # The request as its caller built it (a live request's own parameters); None: the
    # job's settings build it from `messages`.
    request: ChatRequest | None = None
    # How long a call may wait for its tier's limits before it is refused (`NotSent`) and
    # the prompt escalates (a live caller is waiting); None: as long as it takes.
    max_wait_s: float | None = None
    # Stream the answer and decide on its first `hold_tokens` tokens (the gateway's
    # `stream_holdback_tokens`, for a streaming caller); None: decide on the whole answer.
    hold_tokens: int | None = None

    def hold(self, escalation: str | None) -> int | None:
        """How many tokens to hold before deciding: where nothing is left to escalate to,
        only the first (its failure can still be retried unseen)."""
        if self.hold_tokens is None:
            return None
        return self.hold_tokens if escalation else 1

    def chat_request(self) -> ChatRequest:
        return self.request or self.job.request(self.messages)


def load_work(engine: Engine, prompt_ids: list[int], tier: str) -> list[WorkItem]:
    """The prompts of a message still to answer on `tier`, in message order: not already
    answered, cancelled, gone, or escalated past this tier. Each job's stored settings are
    validated once per message."""
    with engine.connect() as conn:
        rows = open_prompts(conn=conn, prompt_ids=prompt_ids, escalated_from=tier)
    jobs = {row.job_id: load_job_settings(row.mode, row.params) for row in rows}
    return [WorkItem(row.id, row.job_id, row.messages, jobs[row.job_id]) for row in rows]


class JobStopped(Exception):
    """The job was cancelled (or finished) while this prompt waited for its call."""


@dataclass(frozen=True, slots=True)
class Answered:
    """A message's committed records, and the first failure if a prompt could not finish
    its step (the task sends the records' follow-ups, then raises it for a retry)."""

    records: list[Record]
    error: BaseException | None


async def answer_message(
    work: Sequence[WorkItem], tier: TierConfig, ctx: WorkerContext
) -> Answered:
    """Answer a message's prompts on `tier`, at most the tier's `concurrency` calls in flight
    per worker, and return once everything they recorded is committed."""
    in_flight = ctx.loop.in_flight(tier.name, tier.calls_in_flight)

    async def one(item: WorkItem) -> list[Record]:
        # The slot is held until the prompt's records are committed: a worker never has
        # more calls paid for but not on record than its tier's `concurrency` (the most a
        # kill -9 can lose).
        async with in_flight:
            return await answer_prompt(item, tier, ctx)

    # Every prompt runs to its end even when another fails (e.g. Redis went away for it):
    # the failure is raised afterwards, and the retried message skips what is done.
    steps = await asyncio.gather(*(one(item) for item in work), return_exceptions=True)
    records = [record for step in steps if isinstance(step, list) for record in step]
    errors = [step for step in steps if isinstance(step, BaseException)]
    return Answered(records, errors[0] if errors else None)


@dataclass(frozen=True, slots=True)
class Step:
    """One prompt's step on one tier: its committed records (the last is its outcome or its
    escalation; none if the job stopped before the call), the answer the tier gave (also
    when it escalated for low confidence), and the call's last failure, if it failed.

    A streamed answer that was kept (`WorkItem.hold_tokens`) is still coming in: its
    outcome is `held`, not yet recorded — its caller relays the rest, then records it with
    the whole answer (`workers.live.relay`)."""

    records: list[Record]
    completion: Completion | None = None
    error: CallError | None = None
    held: Record | None = None

    @property
    def outcome(self) -> Record | None:
        """The step's last word: its held outcome, or its last record."""
        return self.held or (self.records[-1] if self.records else None)


async def answer_prompt(work: WorkItem, tier: TierConfig, ctx: WorkerContext) -> list[Record]:
    """Answer one prompt on one tier; everything it recorded, committed (the last record is
    its outcome, or its escalation)."""
    return (await answer_step(work, tier, ctx)).records


async def answer_step(work: WorkItem, tier: TierConfig, ctx: WorkerContext) -> Step:
    """`answer_prompt`, keeping what the live gateway hands back to its caller. A request
    the response cache knows is answered from it, with no call; otherwise the call is made
    within the job's budget, and its answer goes into the cache."""
    request = work.chat_request()
    escalation = work.job.next_tier(tier.name)
    key = cache_key(tier, request) if caches(tier, work.job.cache) else None
    cached = await ctx.cache.find(key) if key is not None else None
    if cached is not None:
        return await _answer_from_cache(work, tier, cached, escalation, ctx)
    pending: list[asyncio.Future[Record]] = []

    def record(step: Record) -> None:
        pending.append(ctx.ledger.record(step))

    def record_failure(error: CallError) -> None:  # each failed call, as it happens
        if isinstance(error, NotSent):
            return  # no call was made (the fallback row says why the prompt moved on)
        record(
            Record(work.job_id, work.prompt_id, [attempt_from_error(work.prompt_id, tier, error)])
        )

    async def still_wanted() -> None:
        if not await ctx.jobs.running(work.job_id):
            raise JobStopped

    completion: Completion | None = None
    failure: CallError | None = None
    held: Record | None = None
    try:
        completion = await ctx.caller.call(
            tier,
            request,
            on_failure=record_failure,
            before_call=still_wanted,
            max_wait_s=work.max_wait_s,
            hold=work.hold(escalation),
            spend=_spend(work, tier, ctx),
        )
    except JobStopped:  # cancelled while this prompt waited: no call, nothing to record
        pass
    except BudgetSpent as spent:  # no call: the job's budget could not pay for it
        record(finish(work, [], status=PromptStatus.CANCELLED, error=str(spent)))
    except CallError as error:  # its attempt is already recorded by record_failure
        failure = error
        record(_after_failure(work, tier.name, escalation, error))
    else:
        decided = accept_or_escalate(work, tier, completion, escalation)
        if completion.stream is not None and decided.finish is not None:
            held = decided  # kept: the rest of the stream comes first (uncached: unfinished)
        else:
            if completion.stream is not None:  # escalated: the rest is not wanted
                await completion.stream.aclose()
            elif key is not None:  # a whole answer: the cache may keep it
                cost = decided.attempts[-1]["cost_usd"]
                decided.cache = cache_row(tier, key, completion, cost)
            record(decided)
    # A failed write raises here: Celery retries the message (what is done skips).
    return Step(list(await asyncio.gather(*pending)), completion, failure, held)


def _spend(work: WorkItem, tier: TierConfig, ctx: WorkerContext) -> Spend | None:
    if not work.job.budgeted:
        return None
    caps = job_caps(work.job.max_cost_usd, work.job.tier_max_cost_usd, tier.name)
    return Spend(ctx.budgets, work.job_id, caps) if caps else None


async def _answer_from_cache(
    work: WorkItem,
    tier: TierConfig,
    cached: CachedAnswer,
    escalation: str | None,
    ctx: WorkerContext,
) -> Step:
    if cached.row.prompt_id == work.prompt_id:
        # This prompt's own answer: a redelivered message met it after it was committed
        # (attempt and outcome commit together), so there is nothing left to do.
        return Step([])
    if not await ctx.jobs.running(work.job_id):
        return Step([])
    record = record_from_cache(work, tier, cached, escalation)
    return Step([await ctx.ledger.record(record)], cached.completion())


def record_from_cache(
    work: WorkItem, tier: TierConfig, cached: CachedAnswer, escalation: str | None
) -> Record:
    """A prompt's step answered by the cache, as the original call's answer decides it (the
    same confidence, so the same escalation), with a `cached` attempt instead of a call:
    what any path that found a prompt in the cache writes (a batch path included)."""
    attempt_of = _cached_attempt(cached)
    return accept_or_escalate(work, tier, cached.completion(), escalation, attempt_of=attempt_of)


def _cached_attempt(cached: CachedAnswer) -> AttemptOf:
    def attempt(prompt_id: int, tier: TierConfig, _: Completion, **fields: Any) -> dict[str, Any]:
        return attempt_from_cache(prompt_id, tier, cached.attempt_id, **fields)

    return attempt


def _after_failure(work: WorkItem, tier: str, escalation: str | None, error: CallError) -> Record:
    if escalation:
        return escalate(work, tier, escalation, FallbackReason(error.status.value), attempts=[])
    return finish(work, [], status=PromptStatus.FAILED, final_tier=tier, error=str(error))


def accept_or_escalate(
    work: WorkItem,
    tier: TierConfig,
    completion: Completion,
    escalation: str | None,
    *,
    attempt_of: AttemptOf = attempt_from_completion,
) -> Record:
    score = work.job.confidence(completion)
    attempt = attempt_of(work.prompt_id, tier, completion, confidence=score)
    threshold = work.job.escalation_threshold
    if escalation and score is not None and threshold is not None and score < threshold:
        return escalate(
            work,
            tier.name,
            escalation,
            FallbackReason.LOW_CONFIDENCE,
            attempts=[attempt],
            confidence_value=score,
        )
    return finish(
        work,
        [attempt],
        status=PromptStatus.SUCCEEDED,
        final_tier=tier.name,
        response=completion.text,
        confidence=score,
        finish_reason=completion.finish_reason,
    )


def finish(work: WorkItem, attempts: list[dict[str, Any]], **outcome: Any) -> Record:
    return Record(work.job_id, work.prompt_id, attempts, finish=outcome)


def escalate(
    work: WorkItem,
    from_tier: str,
    to_tier: str,
    reason: FallbackReason,
    *,
    attempts: list[dict[str, Any]],
    confidence_value: float | None = None,
) -> Record:
    low_confidence = reason == FallbackReason.LOW_CONFIDENCE
    fallback = {
        "job_id": work.job_id,
        "prompt_id": work.prompt_id,
        "from_tier": from_tier,
        "to_tier": to_tier,
        "reason": reason,
        "confidence": confidence_value,
        "threshold": work.job.escalation_threshold if low_confidence else None,
        "created_at": utcnow(),
    }
    return Record(work.job_id, work.prompt_id, attempts, fallback=fallback)
