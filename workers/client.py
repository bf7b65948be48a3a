"""The synchronous client: one call to a tier's OpenAI-compatible endpoint through the
`openai` SDK, for the callers that make one call at a time (the LLM router, router
calibration, cost estimates, fine-tuning). Workers answering prompts in bulk use the
leaner `workers.aclient`.

The openai client's own retries are off (`max_retries=0`): retries live in `workers.retry`,
next to the rate limiter, so the two never multiply.
"""

import threading
import time
from typing import Any

import openai

from models import AttemptStatus
from workers.completion import (
    REDACTED,
    CallError,
    Completion,
    elapsed_ms,
    malformed,
    status_error,
    timed_out,
    without_secret,
)
from workers.settings import TierConfig

__all__ = ["REDACTED", "CallError", "Completion", "call_tier", "classify", "openai_client"]

_clients: dict[tuple[str, str, float], openai.OpenAI] = {}
_clients_lock = threading.Lock()


def openai_client(base_url: str, api_key: str, timeout_s: float) -> openai.OpenAI:
    """One client (one connection pool) per tier endpoint per process. Locked: threads
    that start together must not each build a client and its SSL context."""
    key = (base_url, api_key, timeout_s)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = openai.OpenAI(
                base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0
            )
        return _clients[key]


def call_tier(tier: TierConfig, tier_name: str, request: dict[str, Any]) -> Completion:
    api_key = tier.api_key(tier_name)
    client = openai_client(str(tier.base_url).rstrip("/"), api_key, tier.timeout_s)
    started = time.perf_counter()
    try:
        response = client.chat.completions.create(model=tier.model, **request)
    except Exception as exc:  # classified below; anything unexpected is a plain error
        raise without_secret(classify(exc, elapsed_ms(started)), api_key) from None
    return _completion(response, elapsed_ms(started))


def _completion(response: Any, latency_ms: float) -> Completion:
    try:
        choice = response.choices[0]
        text = choice.message.content
        if text is None:
            raise ValueError("answer has no content")
        usage = response.usage
        return Completion(
            text=text,
            prompt_tokens=int(usage.prompt_tokens) if usage else 0,
            completion_tokens=int(usage.completion_tokens) if usage else 0,
            logprobs=_token_logprobs(choice),
            latency_ms=latency_ms,
            finish_reason=choice.finish_reason,
        )
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise malformed(exc, latency_ms) from None


def _token_logprobs(choice: Any) -> list[float] | None:
    content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
    if not content:
        return None
    return [float(token.logprob) for token in content]


def classify(exc: BaseException, latency_ms: float) -> CallError:
    """Turn the openai client's exceptions into our three kinds of failure."""
    if isinstance(exc, openai.APITimeoutError):
        return timed_out(latency_ms)
    if isinstance(exc, openai.APIStatusError):
        headers = getattr(exc.response, "headers", None)
        return status_error(exc.status_code, exc.message, headers, latency_ms)
    if isinstance(exc, openai.APIConnectionError):
        return CallError(
            f"connection failed: {exc}", status=AttemptStatus.ERROR, latency_ms=latency_ms
        )
    return CallError(
        f"{type(exc).__name__}: {exc}", status=AttemptStatus.ERROR, latency_ms=latency_ms
    )
