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
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from models import AttemptStatus, PromptStatus
from models.live import Admission, AdmitRow, live_job_id
from models.outcomes import Record
from workers.answer import Step, WorkItem, answer_step
from workers.attempts import attempt_from_completion, attempt_from_error
from workers.chat import CallError, ChatRequest, Completion, elapsed_ms
from workers.context import WorkerContext
from workers.job_settings import RouteSettings
from workers.routers import Decision, decide_all
from workers.routing import last_user_text, router_attempts
from workers.settings import TierConfig


@dataclass(frozen=True, slots=True)
class LiveRequest:
    """A request as the gateway understood it: what to send, and how to decide."""

    messages: list[dict[str, Any]]
    request: ChatRequest
    job: RouteSettings  # the live job's settings, with the request's router or tier
    tier: str | None = None  # a tier asked for by name: no router, no escalation
    meta: dict[str, Any] | None = None
    max_wait_s: float | None = None  # per tier, for its limits (the gateway's max_queue_s)
    # Stream from the tiers and decide on the first N tokens (`stream_holdback_tokens`).
    hold_tokens: int | None = None


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
    # The kept answer still streaming in (`hold_tokens`): relay it with `relay`, which
    # records it. Its call is then not in `cost_usd` and `upstream_ms` (not over yet).
    held: "HeldAnswer | None" = None


@dataclass(frozen=True, slots=True)
class HeldAnswer:
    """A tier's kept answer whose first tokens are held and whose rest is still coming."""

    work: WorkItem
    tier: TierConfig
    outcome: Record  # the step's outcome on the held tokens, recorded once the rest came
    head: Completion  # the held tokens (`head.stream` reads the rest)


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
        admitted.prompt_id,
        job_id,
        live.messages,
        live.job,
        live.request,
        live.max_wait_s,
        live.hold_tokens,
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
        tier = step.outcome.escalate_to if step.outcome else None
    records = [*await asyncio.gather(*routed), *(r for _, s in steps for r in s.records)]
    return _outcome(work, admitted, decision, steps, records, ctx)


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
    work: WorkItem,
    admitted: Admission,
    decision: Decision,
    steps: list[tuple[str, Step]],
    records: list[Record],
    ctx: WorkerContext,
) -> LiveOutcome:
    final_tier, last = steps[-1]
    finish = (last.outcome.finish if last.outcome else None) or {}
    succeeded = finish.get("status") == PromptStatus.SUCCEEDED
    held = None
    if last.held is not None and last.completion is not None:
        held = HeldAnswer(work, ctx.settings.require_tier(final_tier), last.held, last.completion)
    return LiveOutcome(
        job_id=work.job_id,
        prompt_id=admitted.prompt_id,
        routed_tier=decision.tier,
        final_tier=final_tier,
        completion=last.completion if succeeded else None,
        confidence=finish.get("confidence"),
        escalations=sum(1 for r in records if r.fallback),
        cost_usd=sum(a["cost_usd"] for r in records for a in r.attempts),
        upstream_ms=sum(a["latency_ms"] for r in records for a in r.attempts),
        failures=[_failure(tier, s.error) for tier, s in steps if s.error is not None],
        held=held,
    )


def _failure(tier: str, error: CallError) -> TierFailure:
    return TierFailure(tier, str(error.status), str(error), error.retry_after)


# --- the rest of a held answer -------------------------------------------------------------

Send = Callable[[list[dict[str, Any]]], Awaitable[None]]
DISCONNECTED_DURING = "cancelled: the client disconnected during the answer"


class StreamBroken(Exception):
    """The rest of an answer already partly sent failed (recorded): the caller ends its
    stream with an error, never with another tier's answer."""


async def relay(ctx: WorkerContext, held: HeldAnswer, send: Send) -> Completion:
    """Hand the held events, then the rest as it comes, to `send`; then record the whole
    answer (committed before this returns) and return it. A tier failing on the way is
    recorded as the prompt's failure and raised as `StreamBroken`; a client gone (`send`
    failing, or the handler cancelled) cuts the upstream call and is recorded."""
    stream = held.head.stream
    try:
        async with aclosing(stream.relay()) as rest:
            async for events in rest:
                await send(events)
    except CallError as error:
        part = stream.completion()
        reason = f"the answer broke off after {part.completion_tokens} tokens: {error}"
        await ctx.ledger.record(_broken(held, part, reason, error.status))
        raise StreamBroken(f"{held.tier.name}: {reason}") from None
    except (asyncio.CancelledError, ConnectionError):
        await asyncio.shield(_cut(ctx, held))
        raise
    whole = stream.completion()
    finish = {**(held.outcome.finish or {}), "response": whole.text}
    attempt = attempt_from_completion(
        held.work.prompt_id, held.tier, whole, confidence=finish.get("confidence")
    )
    await ctx.ledger.record(Record(held.work.job_id, held.work.prompt_id, [attempt], finish=finish))
    return whole


async def _cut(ctx: WorkerContext, held: HeldAnswer) -> None:
    await held.head.stream.aclose()
    part = held.head.stream.completion()
    reason = f"{DISCONNECTED_DURING} (after {part.completion_tokens} tokens)"
    await ctx.ledger.record(_broken(held, part, reason, AttemptStatus.ERROR))


def _broken(held: HeldAnswer, part: Completion, reason: str, status: AttemptStatus) -> Record:
    """The call's attempt failed with what it had produced (its tokens are billed), and the
    prompt failed with the text that came before the break."""
    error = CallError(reason, status=status, latency_ms=part.latency_ms, http_status=200)
    attempt = attempt_from_error(
        held.work.prompt_id,
        held.tier,
        error,
        prompt_tokens=part.prompt_tokens,
        completion_tokens=part.completion_tokens,
        cost_usd=held.tier.cost_usd(part.prompt_tokens, part.completion_tokens),
    )
    finish = {
        "status": PromptStatus.FAILED,
        "final_tier": held.tier.name,
        "response": part.text,
        "confidence": (held.outcome.finish or {}).get("confidence"),
        "error": reason,
    }
    return Record(held.work.job_id, held.work.prompt_id, [attempt], finish=finish)


def open_live_job(ctx: WorkerContext, name: str, job: RouteSettings) -> int:
    """The live job called `name` (created with the gateway's settings if new); in a thread."""
    with ctx.ledger.engine.begin() as conn:
        return live_job_id(conn=conn, name=name, params=job.to_params(), router=job.router)
