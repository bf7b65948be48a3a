"""A model call's shapes: the `ChatRequest` a step sends, the `Completion` it gets back or the
`CallError` that says how it failed, and how the chat-completions wire format (an HTTP status
and a JSON body) becomes one of them. No HTTP client here, so anything can import it cheaply."""

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from models import AttemptStatus


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a step asks of a tier; the tier adds its model name when it is sent."""

    messages: list[dict[str, Any]]
    temperature: float | None = None
    max_tokens: int | None = None
    logprobs: bool = False
    # Parameters a live caller set that go to the model unchanged (stop, seed, tools,
    # response_format, top_logprobs, ...): the gateway's pass-through (producer.gateway).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def body(self, model: str) -> dict[str, Any]:
        """The JSON body of POST /chat/completions."""
        body: dict[str, Any] = {"model": model, "messages": self.messages}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 0  # llama.cpp sends logprobs only when this is set
        body.update(self.extra)
        return body


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] | None
    latency_ms: float
    finish_reason: str | None
    # The answer's JSON as the model sent it: what the gateway hands back to its caller
    # (tool calls, token logprobs, refusal and all), not kept by anything else.
    body: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    # A streamed answer still coming in (`workers.held_stream.HeldStream`): this is its
    # held head; None for a whole answer.
    stream: Any = field(default=None, repr=False, compare=False)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


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


class NotSent(CallError):
    """A call never made: the tier's limits would have kept it waiting longer than its
    caller may wait (`max_wait_s`, the gateway's `max_queue_s`). Not a model call, so no
    attempt row; the step escalates (reason rate_limited) or the caller says when to retry."""

    def __init__(self, message: str, *, wait_s: float) -> None:
        super().__init__(
            message,
            status=AttemptStatus.RATE_LIMITED,
            latency_ms=0.0,
            retry_after=wait_s,
            retryable=False,
        )


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def malformed(reason: object, latency_ms: float) -> CallError:
    return CallError(
        f"malformed response: {reason}",
        status=AttemptStatus.ERROR,
        latency_ms=latency_ms,
        http_status=200,
    )


def timed_out(latency_ms: float) -> CallError:
    return CallError("request timed out", status=AttemptStatus.TIMEOUT, latency_ms=latency_ms)


def status_error(
    code: int, message: str, headers: Mapping[str, str] | None, latency_ms: float
) -> CallError:
    """An HTTP error answer: 429 is a rate limit (the tier pauses), 5xx/408/409 may pass on
    a retry, any other 4xx will not."""
    text = f"HTTP {code}: {message}"[:500]
    if code == 429:
        return CallError(
            text,
            status=AttemptStatus.RATE_LIMITED,
            latency_ms=latency_ms,
            http_status=429,
            retry_after=retry_after(headers),
        )
    return CallError(
        text,
        status=AttemptStatus.ERROR,
        latency_ms=latency_ms,
        http_status=code,
        retry_after=retry_after(headers),
        retryable=code >= 500 or code in (408, 409),
    )


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds form); None when absent."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = (headers or {}).get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


def completion_from_json(body: Any, latency_ms: float) -> Completion:
    """A chat completion from its JSON body (the OpenAI wire format)."""
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"]
        if text is None and choice["message"].get("tool_calls"):
            text = ""  # a tool call (a gateway caller's `tools`): the answer is the call
        if not isinstance(text, str):
            raise ValueError("answer has no content")
        usage = body.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            logprobs=_token_logprobs(choice.get("logprobs")),
            latency_ms=latency_ms,
            finish_reason=choice.get("finish_reason"),
            body=body,
        )
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise malformed(exc, latency_ms) from None


def _token_logprobs(logprobs: Any) -> list[float] | None:
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content:
        return None
    return [float(token["logprob"]) for token in content]
