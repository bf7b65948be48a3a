"""Answering prompts on one tier — the step both job modes share.

Teacher jobs call their teacher tier and keep the answer. Route jobs ask for logprobs, and
a doubtful answer or a call that still fails after its retries escalates to the next tier
of the job's fallback chain (a `fallbacks` row, then a call there) instead of ending the
prompt; only the last tier's failure fails it.

A message's prompts are loaded with three queries (`load_work`), answered concurrently as
coroutines in the worker's call loop (`answer_prompt`), and what they produce goes to the
ledger writer as `Record`s (`workers.ledger`), committed in groups. `workers.tasks` wraps
this in a Celery task.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from models import FallbackReason, JobStatus, PromptStatus
from models.outcomes import Record, Written
from models.tables import FALLBACKS, JOBS, PROMPTS
from models.queries import open_prompts
from models.types import utcnow
from workers.aclient import ChatClient
from workers.attempts import attempt_from_completion, attempt_from_error
from workers.calls import limited_call_async
from workers.completion import CallError, Completion
from workers.confidence import confidence
from workers.ledger import LedgerWriter
from workers.ratelimit import AsyncRateLimiter
from workers.request import build_request, next_tier
from workers.retry import RetryPolicy, call_with_retries
from workers.settings import Settings, TierConfig
from workers.ttlcache import TtlCache


@dataclass(frozen=True, slots=True)
class WorkItem:
    prompt_id: int
    job_id: int
    messages: list[dict[str, Any]]
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What follows a committed step: nothing, send the prompt to `escalate_to`, or (when
    `job_finished`) the job's follow-up work such as the reducer."""

    job_id: int | None = None
    escalate_to: str | None = None
    job_finished: bool = False


FollowUp = Callable[[Outcome, int], None]


def load_work(engine: Engine, prompt_ids: list[int], tier: str) -> list[WorkItem]:
    """The prompts of a message still to answer on `tier`, in message order: not already
    answered, cancelled, gone, or escalated past this tier. This check is what makes a
    redelivered message harmless. Three queries for the whole message."""
    with engine.connect() as conn:
        rows = open_prompts(conn, prompt_ids, PROMPTS.c.messages)
        escalated = set(
            conn.execute(
                select(FALLBACKS.c.prompt_id).where(
                    FALLBACKS.c.prompt_id.in_(prompt_ids), FALLBACKS.c.from_tier == tier
                )
            ).scalars()
        )
    return [
        WorkItem(row.id, row.job_id, list(row.messages), params)
        for row, params in rows
        if row.id not in escalated
    ]


# How stale a worker's view of a job's status may be: a cancel stops its calls within this.
JOB_STATUS_TTL_S = 0.1


class RunningJobs:
    """Whether a job still wants calls: checked right before each call, so a cancel stops
    the calls that were waiting. The answer is re-read at most every `ttl_s` per job per
    process (one query however many calls are in flight), so a cancel reaches every
    worker within `ttl_s` plus a query."""

    def __init__(self, engine: Engine, ttl_s: float = JOB_STATUS_TTL_S) -> None:
        self.engine = engine
        self.statuses: TtlCache[int, bool] = TtlCache(ttl_s)

    async def running(self, job_id: int) -> bool:
        loop = asyncio.get_running_loop()
        return await self.statuses.get(
            job_id, lambda: loop.run_in_executor(None, self._read, job_id)
        )

    def _read(self, job_id: int) -> bool:
        with self.engine.connect() as conn:
            status = conn.execute(select(JOBS.c.status).where(JOBS.c.id == job_id)).scalar()
        return status == JobStatus.RUNNING


class JobStopped(Exception):
    """The job was cancelled (or finished) while this prompt waited for its call."""


@dataclass(frozen=True, slots=True)
class Context:
    """What answering needs in this worker process; lives in the call loop."""

    settings: Settings
    ledger: LedgerWriter
    jobs: RunningJobs
    limiter: AsyncRateLimiter
    client: ChatClient
    follow_up: FollowUp


async def answer_prompt(work: WorkItem, tier_name: str, ctx: Context) -> list[Future[Written]]:
    """Answer one prompt on one tier; the futures of everything it recorded (the last one
    is its outcome, or its escalation)."""
    tier = ctx.settings.require_tier(tier_name, f"job {work.job_id}")
    request = build_request(work.params, work.messages)
    escalation = next_tier(work.params, tier_name)
    recorded: list[Future[Written]] = []

    def record_failure(error: CallError) -> None:  # each failed call, as it happens
        attempt = attempt_from_error(work.prompt_id, tier_name, tier, error)
        recorded.append(ctx.ledger.submit(Record(work.job_id, work.prompt_id, [attempt])))

    async def still_wanted() -> None:
        if not await ctx.jobs.running(work.job_id):
            raise JobStopped

    async def call() -> Completion:
        return await limited_call_async(
            tier_name,
            tier,
            request,
            limiter=ctx.limiter,
            call=ctx.client.call,
            before_call=still_wanted,
        )

    policy = RetryPolicy(tier.max_retries, tier.backoff_base_s, tier.backoff_max_s)
    try:
        completion = await call_with_retries(call, policy, on_failure=record_failure)
    except JobStopped:  # cancelled while this prompt waited: no call, nothing to record
        return recorded
    except CallError as error:  # its attempt is already recorded by record_failure
        if escalation:
            reason = FallbackReason(error.status.value)
            step = escalate(work, tier_name, escalation, reason, attempts=[])
        else:
            step = finish(
                work, [], status=PromptStatus.FAILED, final_tier=tier_name, error=str(error)
            )
    else:
        step = accept_or_escalate(work, tier_name, tier, completion, escalation)
    recorded.append(submit(ctx, step, escalate_to=escalation if step.fallback else None))
    return recorded


def accept_or_escalate(
    work: WorkItem,
    tier_name: str,
    tier: TierConfig,
    completion: Completion,
    escalation: str | None,
) -> Record:
    score = None
    if work.params.get("logprobs"):
        score = confidence(
            completion.logprobs,
            method=work.params.get("confidence_method", "geometric_mean"),
            unknown=work.params.get("unknown_confidence", 0.5),
        )
    attempt = attempt_from_completion(work.prompt_id, tier_name, tier, completion, confidence=score)
    threshold = work.params.get("threshold")
    if escalation and score is not None and threshold is not None and score < threshold:
        return escalate(
            work,
            tier_name,
            escalation,
            FallbackReason.LOW_CONFIDENCE,
            attempts=[attempt],
            confidence_value=score,
        )
    return finish(
        work,
        [attempt],
        status=PromptStatus.SUCCEEDED,
        final_tier=tier_name,
        response=completion.text,
        confidence=score,
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
        "threshold": work.params.get("threshold") if low_confidence else None,
        "created_at": utcnow(),
    }
    return Record(work.job_id, work.prompt_id, attempts, fallback=fallback)


def submit(ctx: Context, record: Record, *, escalate_to: str | None) -> Future[Written]:
    """Hand `record` to the ledger; once it is committed, start what follows from it."""
    written = ctx.ledger.submit(record)

    def committed(done: Future[Written]) -> None:
        if done.cancelled() or done.exception() is not None:
            return  # the task sees the error when it waits for its records
        result = done.result()
        if escalate_to:
            ctx.follow_up(Outcome(record.job_id, escalate_to=escalate_to), record.prompt_id)
        elif result.finished:
            ctx.follow_up(
                Outcome(record.job_id, job_finished=result.job_finished), record.prompt_id
            )

    written.add_done_callback(committed)
    return written
