"""One live request through the answering step (the gateway's caller of the shared core):
router → tier → confidence → escalation along the fallback chain, recorded as a prompt of a
live job. The decision and each tier's step are route jobs' own code (`workers.routers`,
`workers.routing.router_attempts`, `workers.answer.answer_step`); what differs is only
that the next tier is called here, in the same coroutine, instead of through a Celery
message, because a caller is waiting for the answer.

What the caller gets back is the final tier's answer; everything the request paid for is
committed (group commit, `workers.ledger`) before `answer_live` returns."""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from models import AttemptStatus, PromptStatus
from models.live import Admission, AdmitRow, live_job_id
from models.outcomes import Record
from workers.answer import Step, WorkItem, answer_step
from workers.attempts import attempt_from_error
from workers.chat import CallError, ChatRequest, Completion, elapsed_ms
from workers.context import WorkerContext
from workers.job_settings import RouteSettings
from workers.routers import Decision, decide_all
from workers.routing import last_user_text, router_attempts


@dataclass(frozen=True, slots=True)
class LiveRequest:
    """A request as the gateway understood it: what to send, and how to decide."""

    messages: list[dict[str, Any]]
    request: ChatRequest
    job: RouteSettings  # the live job's settings, with the request's router or tier
    tier: str | None = None  # a tier asked for by name: no router, no escalation
    meta: dict[str, Any] | None = None
    max_wait_s: float | None = None  # per tier, for its limits (the gateway's max_queue_s)


@dataclass(frozen=True, slots=True)
class TierFailure:
    tier: str
    reason: str  # the attempt status (error, timeout, rate_limited)
    message: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class LiveOutcome:
    """What the request's caller is told: the final answer (None: every tier failed, or
    the job was cancelled) and the decision trace, as recorded."""

    job_id: int
    prompt_id: int
    routed_tier: str
    final_tier: str
    completion: Completion | None
    confidence: float | None
    escalations: int
    cost_usd: float
    upstream_ms: float = 0.0  # the model calls' own time (router calls included)
    failures: list[TierFailure] = field(default_factory=list)


async def decide(live: LiveRequest, ctx: WorkerContext) -> Decision:
    if live.tier is not None:
        return Decision(live.tier, None, 0.0)
    router = ctx.router_for(live.job)
    text = last_user_text(live.messages)
    return (await decide_all(router, [text], concurrency=1))[0]


async def answer_live(live: LiveRequest, ctx: WorkerContext, *, job_id: int) -> LiveOutcome:
    """Decide, admit the prompt (group-committed with other requests' writes), then answer
    tier after tier until a tier keeps its answer or the chain ends."""
    decision = await decide(live, ctx)
    admitted = await _admit(ctx, job_id, live, decision)
    work = WorkItem(
        admitted.prompt_id, job_id, live.messages, live.job, live.request, live.max_wait_s
    )
    attempts = router_attempts(work.prompt_id, decision, ctx)
    routed = [ctx.ledger.record(Record(job_id, work.prompt_id, attempts))] if attempts else []
    steps: list[tuple[str, Step]] = []
    tier: str | None = decision.tier
    while tier is not None:
        started = time.perf_counter()
        try:
            step = await answer_step(work, ctx.settings.require_tier(tier), ctx)
        except asyncio.CancelledError:  # the client went away: the upstream call is cut
            await asyncio.shield(_record_disconnect(ctx, work, tier, elapsed_ms(started)))
            raise
        steps.append((tier, step))
        tier = step.records[-1].escalate_to if step.records else None
    records = [*await asyncio.gather(*routed), *(r for _, s in steps for r in s.records)]
    return _outcome(job_id, admitted, decision, steps, records)


DISCONNECTED = "cancelled: the client disconnected before the answer"


async def _record_disconnect(ctx: WorkerContext, work: WorkItem, tier: str, ms: float) -> None:
    """The call the client no longer waits for, as a failed attempt (what it cost is not
    known: the provider may bill it), and the prompt failed with the reason."""
    config = ctx.settings.require_tier(tier)
    error = CallError(DISCONNECTED, status=AttemptStatus.ERROR, latency_ms=ms)
    record = Record(
        work.job_id,
        work.prompt_id,
        [attempt_from_error(work.prompt_id, config, error)],
        finish={"status": PromptStatus.FAILED, "final_tier": tier, "error": DISCONNECTED},
    )
    await ctx.ledger.record(record)


async def _admit(
    ctx: WorkerContext, job_id: int, live: LiveRequest, decision: Decision
) -> Admission:
    """The prompt row, pending, inserted with the ledger writer's next group."""
    row = AdmitRow(
        job_id, live.messages, decision.tier, decision.score, decision.latency_ms, live.meta
    )
    return await asyncio.wrap_future(ctx.ledger.admit(row))


def _outcome(
    job_id: int,
    admitted: Admission,
    decision: Decision,
    steps: list[tuple[str, Step]],
    records: list[Record],
) -> LiveOutcome:
    final_tier, last = steps[-1]
    finish = (last.records[-1].finish if last.records else None) or {}
    succeeded = finish.get("status") == PromptStatus.SUCCEEDED
    return LiveOutcome(
        job_id=job_id,
        prompt_id=admitted.prompt_id,
        routed_tier=decision.tier,
        final_tier=final_tier,
        completion=last.completion if succeeded else None,
        confidence=finish.get("confidence"),
        escalations=sum(1 for r in records if r.fallback),
        cost_usd=sum(a["cost_usd"] for r in records for a in r.attempts),
        upstream_ms=sum(a["latency_ms"] for r in records for a in r.attempts),
        failures=[_failure(tier, s.error) for tier, s in steps if s.error is not None],
    )


def _failure(tier: str, error: CallError) -> TierFailure:
    return TierFailure(tier, str(error.status), str(error), error.retry_after)


def open_live_job(ctx: WorkerContext, name: str, job: RouteSettings) -> int:
    """The live job called `name` (created with the gateway's settings if new); in a thread."""
    with ctx.ledger.engine.begin() as conn:
        return live_job_id(conn=conn, name=name, params=job.to_params(), router=job.router)
