"""Job-level bookkeeping shared by the teacher and route flows."""

from typing import Any

from sqlalchemy.engine import Engine

from models import Attempt, AttemptPurpose, AttemptStatus, PromptStatus, session_scope
from models.queries import finish_job_if_done, finish_prompt, record_attempt
from workers.client import CallError, Completion
from workers.cost import cost_usd
from workers.settings import TierConfig


class PromptTotals:
    """What a prompt's attempts add up to: tokens, cost and latency."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self.latency_ms = 0.0

    def add(self, attempt: Attempt) -> None:
        self.prompt_tokens += attempt.prompt_tokens
        self.completion_tokens += attempt.completion_tokens
        self.cost_usd += attempt.cost_usd
        self.latency_ms += attempt.latency_ms

    def as_fields(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
        }


def success_attempt(
    *, prompt_id: int, tier_name: str, tier: TierConfig, completion: Completion,
    confidence: float | None = None, purpose: AttemptPurpose = AttemptPurpose.ANSWER,
) -> Attempt:
    return Attempt(
        prompt_id=prompt_id,
        purpose=purpose,
        tier=tier_name,
        model=tier.model,
        status=AttemptStatus.OK,
        http_status=200,
        latency_ms=completion.latency_ms,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cost_usd=cost_usd(tier, completion.prompt_tokens, completion.completion_tokens),
        confidence=confidence,
    )


def failed_attempt(
    *, prompt_id: int, tier_name: str, tier: TierConfig, error: CallError,
    purpose: AttemptPurpose = AttemptPurpose.ANSWER,
) -> Attempt:
    return Attempt(
        prompt_id=prompt_id,
        purpose=purpose,
        tier=tier_name,
        model=tier.model,
        status=error.status,
        http_status=error.http_status,
        latency_ms=error.latency_ms,
        error=str(error),
    )


def save_attempt(engine: Engine, attempt: Attempt) -> None:
    with session_scope(engine) as session:
        record_attempt(session=session, attempt=attempt)


def complete_prompt(
    engine: Engine, *, prompt_id: int, job_id: int, status: PromptStatus,
    attempt: Attempt | None = None, **fields: Any,
) -> bool:
    """Record the last attempt and the prompt's outcome in one transaction.

    Returns True when this made the job finish (so its caller starts the reducer once).
    """
    with session_scope(engine) as session:
        if attempt is not None:
            record_attempt(session=session, attempt=attempt)
        if not finish_prompt(session=session, prompt_id=prompt_id, job_id=job_id, status=status, **fields):
            return False
        return finish_job_if_done(session=session, job_id=job_id)
