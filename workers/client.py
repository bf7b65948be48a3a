"""Calls one tier's OpenAI-compatible endpoint and classifies what came back.

The openai client's own retries are off (`max_retries=0`): retries live in `workers.retry`,
next to the rate limiter, so the two never multiply.
"""

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import openai

from models import AttemptStatus
from workers.settings import TierConfig


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] | None
    latency_ms: float
    finish_reason: str | None


class CallError(Exception):
    """A failed call: `status` says how (error, timeout, rate_limited), `retryable` whether
    trying again can help, `retry_after` what the provider asked us to wait."""

    def __init__(
        self,
        message: str,
        *,
        status: AttemptStatus,
        latency_ms: float,
        http_status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.latency_ms = latency_ms
        self.http_status = http_status
        self.retry_after = retry_after
        self.retryable = retryable


@lru_cache(maxsize=32)
def openai_client(base_url: str, api_key: str, timeout_s: float) -> openai.OpenAI:
    """One client (one connection pool) per tier endpoint per process."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)


def call_tier(tier: TierConfig, tier_name: str, request: dict[str, Any]) -> Completion:
    api_key = tier.api_key(tier_name)
    client = openai_client(str(tier.base_url).rstrip("/"), api_key, tier.timeout_s)
    started = time.perf_counter()
    try:
        response = client.chat.completions.create(model=tier.model, **request)
    except Exception as exc:  # classified below; anything unexpected is a plain error
        raise without_secret(classify(exc, _elapsed_ms(started)), api_key) from None
    return _completion(response, _elapsed_ms(started))


REDACTED = "[redacted]"
# Shorter "keys" are placeholders like "x" for local servers; replacing them would garble text.
MIN_SECRET_LENGTH = 8


def without_secret(error: CallError, secret: str) -> CallError:
    """The error with `secret` cut out of its message. Some servers echo the key they were
    sent in their error text (OpenAI masks most of it, proxies and local servers may not),
    and that text goes into the database, the logs and `distillery results`."""
    message = str(error)
    if len(secret) >= MIN_SECRET_LENGTH and secret in message:
        error.args = (message.replace(secret, REDACTED),)
    return error


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


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
        raise CallError(
            f"malformed response: {exc}",
            status=AttemptStatus.ERROR,
            latency_ms=latency_ms,
            http_status=200,
        ) from None


def _token_logprobs(choice: Any) -> list[float] | None:
    content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
    if not content:
        return None
    return [float(token.logprob) for token in content]


def classify(exc: BaseException, latency_ms: float) -> CallError:
    """Turn the openai client's exceptions into our three kinds of failure."""
    if isinstance(exc, openai.APITimeoutError):
        return CallError("request timed out", status=AttemptStatus.TIMEOUT, latency_ms=latency_ms)
    if isinstance(exc, openai.RateLimitError):
        return CallError(
            _short(exc),
            status=AttemptStatus.RATE_LIMITED,
            latency_ms=latency_ms,
            http_status=429,
            retry_after=_retry_after(exc.response),
        )
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        return CallError(
            _short(exc),
            status=AttemptStatus.ERROR,
            latency_ms=latency_ms,
            http_status=code,
            retry_after=_retry_after(exc.response),
            retryable=code >= 500 or code in (408, 409),
        )
    if isinstance(exc, openai.APIConnectionError):
        return CallError(
            f"connection failed: {exc}", status=AttemptStatus.ERROR, latency_ms=latency_ms
        )
    return CallError(
        f"{type(exc).__name__}: {exc}", status=AttemptStatus.ERROR, latency_ms=latency_ms
    )


def _short(exc: openai.APIStatusError) -> str:
    return f"HTTP {exc.status_code}: {exc.message}"[:500]


def _retry_after(response: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds form); None when absent."""
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None
