"""Attempt rows (one per model call) as the ledger inserts them: plain dicts with every
column, so a group of them is one executemany INSERT."""

from datetime import timedelta
from typing import Any

from models import AttemptPurpose, AttemptStatus
from models.types import utcnow
from workers.chat import CallError, Completion
from workers.settings import TierConfig


def _attempt(prompt_id: int, tier: TierConfig, latency_ms: float, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "prompt_id": prompt_id,
        "purpose": AttemptPurpose.ANSWER,
        "tier": tier.name,
        "model": tier.model,
        "http_status": None,
        "latency_ms": latency_ms,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.0,
        "confidence": None,
        "error": None,
        "batch_id": None,  # an online call (workers/batches sets its batch's id)
        "cached_from": None,
        "finish_reason": None,
        # The call's start: it ended now, after its latency.
        "started_at": utcnow() - timedelta(milliseconds=latency_ms),
    }
    row.update(fields)
    return row


def attempt_from_completion(
    prompt_id: int, tier: TierConfig, completion: Completion, **fields: Any
) -> dict[str, Any]:
    return _attempt(
        prompt_id,
        tier,
        completion.latency_ms,
        status=AttemptStatus.OK,
        http_status=200,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cost_usd=tier.cost_usd(completion.prompt_tokens, completion.completion_tokens),
        finish_reason=completion.finish_reason,
        **fields,
    )


def attempt_from_error(
    prompt_id: int, tier: TierConfig, error: CallError, **fields: Any
) -> dict[str, Any]:
    return _attempt(
        prompt_id,
        tier,
        error.latency_ms,
        status=error.status,
        http_status=error.http_status,
        error=str(error),
        **fields,
    )


def attempt_from_cache(
    prompt_id: int, tier: TierConfig, original_attempt_id: int, **fields: Any
) -> dict[str, Any]:
    """An answer the response cache gave: no call, no tokens billed, cost 0, and a pointer
    to the attempt that paid for it."""
    return _attempt(
        prompt_id,
        tier,
        0.0,
        status=AttemptStatus.CACHED,
        cached_from=original_attempt_id,
        **fields,
    )
