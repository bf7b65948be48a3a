"""Answering one prompt on one tier — the step both job modes share.

Teacher jobs call their teacher tier and keep the answer. Route jobs ask for logprobs, and
a doubtful answer or a call that still fails after its retries escalates to the next tier
of the job's fallback chain (a `fallbacks` row, then a call there) instead of ending the
prompt; only the last tier's failure fails it. Plain functions; `workers.tasks` wraps them.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from models import (
    TERMINAL_PROMPT_STATUSES,
    Attempt,
    AttemptStatus,
    Fallback,
    FallbackReason,
    Job,
    JobStatus,
    Prompt,
    PromptStatus,
    session_scope,
)
from models.queries import finish_job_if_done, finish_prompt
from workers.calls import limited_call
from workers.client import CallError, Completion
from workers.confidence import confidence
from workers.cost import cost_usd
from workers.retry import RetryPolicy, call_with_retries
from workers.settings import Settings, TierConfig


@dataclass(frozen=True, slots=True)
class WorkItem:
    prompt_id: int
    job_id: int
    messages: list[dict[str, Any]]
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the caller does next: nothing, send the prompt to `escalate_to`, or (when
    `job_finished`) the job's follow-up work such as the reducer."""

    job_id: int | None = None
    escalate_to: str | None = None
    job_finished: bool = False


NOTHING = Outcome()


def build_request(params: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    system = params.get("system_prompt")
    if system and not any(m.get("role") in ("system", "developer") for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    request: dict[str, Any] = {"messages": messages, "temperature": params.get("temperature", 0.7)}
    if params.get("max_tokens"):
        request["max_tokens"] = params["max_tokens"]
    if params.get("logprobs"):
        request["logprobs"] = True
        request["top_logprobs"] = 0  # llama.cpp sends logprobs only when this is set
    return request


def next_tier(params: dict[str, Any], tier: str) -> str | None:
    """The first tier of the job's fallback chain above `tier` (tiers ranked by config order)."""
    order: list[str] = params.get("tiers", [])
    if tier not in order:
        return None
    above = [
        t for t in params.get("fallback", []) if t in order and order.index(t) > order.index(tier)
    ]
    return above[0] if above else None


class JobStopped(Exception):
    """The job was cancelled (or finished) while this prompt waited for its call."""


def job_stopped(engine: Engine, job_id: int) -> bool:
    """Checked right before each model call, so a cancel stops calls that were waiting."""
    with Session(engine) as session:
        status = session.execute(select(col(Job.status)).where(col(Job.id) == job_id)).scalar()
    return status != JobStatus.RUNNING


def load_work(engine: Engine, prompt_id: int, tier: str) -> WorkItem | None:
    """The prompt to answer on `tier`, or None when there is nothing left to do: already
    answered, cancelled, gone, or already escalated past this tier. This check is what makes
    a redelivered message harmless."""
    with Session(engine) as session:
        prompt = session.get(Prompt, prompt_id)
        if prompt is None or prompt.status in TERMINAL_PROMPT_STATUSES:
            return None
        job = session.get(Job, prompt.job_id)
        if job is None or job.status != JobStatus.RUNNING:
            return None
        escalated = select(col(Fallback.id)).where(
            col(Fallback.prompt_id) == prompt_id, col(Fallback.from_tier) == tier
        )
        if session.execute(escalated.limit(1)).first() is not None:
            return None
        return WorkItem(prompt_id, prompt.job_id, list(prompt.messages), dict(job.params))


def attempt_from_completion(
    prompt_id: int, tier_name: str, tier: TierConfig, completion: Completion, **fields: Any
) -> Attempt:
    return Attempt(
        prompt_id=prompt_id,
        tier=tier_name,
        model=tier.model,
        status=AttemptStatus.OK,
        http_status=200,
        latency_ms=completion.latency_ms,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cost_usd=cost_usd(tier, completion.prompt_tokens, completion.completion_tokens),
        **fields,
    )


def attempt_from_error(
    prompt_id: int, tier_name: str, tier: TierConfig, error: CallError, **fields: Any
) -> Attempt:
    return Attempt(
        prompt_id=prompt_id,
        tier=tier_name,
        model=tier.model,
        status=error.status,
        http_status=error.http_status,
        latency_ms=error.latency_ms,
        error=str(error),
        **fields,
    )


def save(engine: Engine, *rows: Any) -> None:
    with session_scope(engine) as session:
        session.add_all(rows)


def prompt_totals(session: Session, prompt_id: int) -> dict[str, Any]:
    """A prompt's tokens, cost and latency: the sum of all its attempts (route calls and
    escalations included), so the prompt row always adds up to its attempts."""
    sums = select(
        func.coalesce(func.sum(Attempt.prompt_tokens), 0),
        func.coalesce(func.sum(Attempt.completion_tokens), 0),
        func.coalesce(func.sum(Attempt.cost_usd), 0.0),
        func.coalesce(func.sum(Attempt.latency_ms), 0.0),
    ).where(col(Attempt.prompt_id) == prompt_id)
    prompt_tokens, completion_tokens, cost, latency = session.execute(sums).one()
    fell_back = select(col(Fallback.id)).where(col(Fallback.prompt_id) == prompt_id).limit(1)
    return {
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "cost_usd": float(cost),
        "latency_ms": float(latency),
        "fell_back": session.execute(fell_back).first() is not None,
    }


def complete(
    engine: Engine, work: WorkItem, *, status: PromptStatus, last: Attempt | None, **fields: Any
) -> Outcome:
    """Record the last attempt and the prompt's outcome in one transaction."""
    with session_scope(engine) as session:
        if last is not None:
            session.add(last)
            session.flush()
        totals = prompt_totals(session, work.prompt_id)
        if not finish_prompt(
            session=session,
            prompt_id=work.prompt_id,
            job_id=work.job_id,
            status=status,
            **totals,
            **fields,
        ):
            return NOTHING
        finished = finish_job_if_done(session=session, job_id=work.job_id)
    return Outcome(job_id=work.job_id, job_finished=finished)


def escalate(
    engine: Engine,
    work: WorkItem,
    *,
    from_tier: str,
    to_tier: str,
    reason: FallbackReason,
    last: Attempt | None,
    confidence_value: float | None = None,
) -> Outcome:
    fallback = Fallback(
        job_id=work.job_id,
        prompt_id=work.prompt_id,
        from_tier=from_tier,
        to_tier=to_tier,
        reason=reason,
        confidence=confidence_value,
        threshold=work.params.get("threshold") if reason == FallbackReason.LOW_CONFIDENCE else None,
    )
    save(engine, *([last] if last else []), fallback)
    return Outcome(job_id=work.job_id, escalate_to=to_tier)


def answer_on_tier(
    prompt_id: int, tier_name: str, *, settings: Settings, engine: Engine
) -> Outcome:
    work = load_work(engine, prompt_id, tier_name)
    if work is None:
        return NOTHING
    tier = settings.require_tier(tier_name, f"job {work.job_id}")
    request = build_request(work.params, work.messages)
    escalation = next_tier(work.params, tier_name)

    def record_failure(error: CallError) -> None:
        save(engine, attempt_from_error(prompt_id, tier_name, tier, error))

    def still_wanted() -> None:
        if job_stopped(engine, work.job_id):
            raise JobStopped

    def call() -> Completion:
        return limited_call(settings, tier_name, request, before_call=still_wanted)

    policy = RetryPolicy(tier.max_retries, tier.backoff_base_s, tier.backoff_max_s)
    try:
        completion = call_with_retries(call, policy, on_failure=record_failure)
    except JobStopped:  # cancelled while this prompt waited: no call, nothing to record
        return NOTHING
    except CallError as error:  # already recorded as an attempt by record_failure
        if escalation:
            reason = FallbackReason(error.status.value)
            return escalate(
                engine, work, from_tier=tier_name, to_tier=escalation, reason=reason, last=None
            )
        return complete(
            engine,
            work,
            status=PromptStatus.FAILED,
            last=None,
            final_tier=tier_name,
            error=str(error),
        )
    return _accept_or_escalate(engine, work, tier_name, tier, completion, escalation)


def _accept_or_escalate(
    engine: Engine,
    work: WorkItem,
    tier_name: str,
    tier: TierConfig,
    completion: Completion,
    escalation: str | None,
) -> Outcome:
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
            engine,
            work,
            from_tier=tier_name,
            to_tier=escalation,
            reason=FallbackReason.LOW_CONFIDENCE,
            last=attempt,
            confidence_value=score,
        )
    return complete(
        engine,
        work,
        status=PromptStatus.SUCCEEDED,
        last=attempt,
        final_tier=tier_name,
        response=completion.text,
        confidence=score,
    )
