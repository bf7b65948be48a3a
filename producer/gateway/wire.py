"""The gateway's wire format: a chat-completions request body becomes a typed `ChatCall`
(or an `ApiError` in OpenAI's error shape), and a live outcome becomes the response body
and its decision-trace headers. No I/O here."""

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from workers.chat import ChatRequest
from workers.live import LiveOutcome

ROUTE_MODEL = "route"
ROUTER_MODELS = ("route:rules", "route:classifier", "route:llm", "route:random")
# What a caller sets that goes to the model as it is (max_tokens and temperature have
# fields of their own; logprobs is the gateway's to decide; n > 1 is refused).
PASS_THROUGH = (
    "stop",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "top_p",
    "top_logprobs",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "user",
)
TRACE_PREFIX = "x-distillery-"


class ApiError(Exception):
    """A request that gets an error answer, in OpenAI's shape:
    `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A validated chat-completions request."""

    model: str
    messages: list[dict[str, Any]]
    temperature: float | None
    max_tokens: int | None
    logprobs: bool  # the caller asked for them (else they are not returned)
    stream: bool
    include_usage: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def request(self, *, logprobs: bool) -> ChatRequest:
        return ChatRequest(
            self.messages, self.temperature, self.max_tokens, logprobs or self.logprobs, self.extra
        )


def model_names(tiers: list[str]) -> list[str]:
    """Exactly what `model` may be: the config's router, each router, each tier."""
    return [ROUTE_MODEL, *ROUTER_MODELS, *tiers]


def parse_chat(raw: bytes, *, models: list[str]) -> ChatCall:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter", param="model")
    if model not in models:
        raise bad_request(
            f"the model {model!r} does not exist; choose one of: {', '.join(models)}",
            param="model",
            code="model_not_found",
        )
    return ChatCall(
        model=model,
        messages=_messages(body.get("messages")),
        temperature=_number(body, "temperature", 0, 2),
        max_tokens=_max_tokens(body),
        logprobs=_flag(body, "logprobs"),
        stream=_flag(body, "stream"),
        include_usage=_include_usage(body),
        extra={key: body[key] for key in PASS_THROUGH if body.get(key) is not None},
    )


def _messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise bad_request("missing required parameter: 'messages'", param="messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(
                f"messages[{n}] must be an object with a 'role'", param=f"messages[{n}]"
            )
    return messages


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad_request(f"'{name}' must be a number from {low} to {high}", param=name)
    return float(value)


def _max_tokens(body: dict[str, Any]) -> int | None:
    if body.get("n") not in (None, 1):
        raise bad_request("only n = 1 is supported", param="n")
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_request(f"'{name}' must be a positive integer", param=name)
        return value
    return None


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"'{name}' must be a boolean", param=name)
    return bool(value)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    return bool(options.get("include_usage"))


def trace_headers(outcome: LiveOutcome) -> dict[str, str]:
    """The decision trace, as recorded in the ledger (the prompt row and its attempts)."""
    confidence = "none" if outcome.confidence is None else f"{outcome.confidence:.6f}"
    return {
        f"{TRACE_PREFIX}routed-tier": outcome.routed_tier,
        f"{TRACE_PREFIX}tier": outcome.final_tier,
        f"{TRACE_PREFIX}confidence": confidence,
        f"{TRACE_PREFIX}escalations": str(outcome.escalations),
        f"{TRACE_PREFIX}cost-usd": f"{outcome.cost_usd:.8f}",
        f"{TRACE_PREFIX}prompt-id": str(outcome.prompt_id),
        f"{TRACE_PREFIX}job-id": str(outcome.job_id),
    }


def completion_body(call: ChatCall, outcome: LiveOutcome) -> dict[str, Any]:
    """The final tier's answer as the model sent it, named by the gateway: its id, the tier
    that answered as `model`, and token logprobs only if the caller asked for them."""
    assert outcome.completion is not None
    upstream = outcome.completion.body or {}
    choice = dict((upstream.get("choices") or [{}])[0])
    choice["index"] = 0
    if not call.logprobs:
        choice["logprobs"] = None
    usage = upstream.get("usage") or {
        "prompt_tokens": outcome.completion.prompt_tokens,
        "completion_tokens": outcome.completion.completion_tokens,
        "total_tokens": outcome.completion.tokens,
    }
    return {
        "id": completion_id(outcome),
        "object": "chat.completion",
        "created": int(upstream.get("created") or time.time()),
        "model": outcome.final_tier,
        "choices": [choice],
        "usage": usage,
        "system_fingerprint": upstream.get("system_fingerprint"),
    }


def completion_id(outcome: LiveOutcome) -> str:
    return f"chatcmpl-distillery-{outcome.job_id}-{outcome.prompt_id}"


def all_failed(outcome: LiveOutcome) -> ApiError:
    """Every tier of the chain failed: 502, with each tier's reason; 429 with Retry-After
    when the last one was at its rate limit (no tier up is left to take the request)."""
    reasons = "; ".join(f"{f.tier}: {f.reason}: {f.message}" for f in outcome.failures)
    last = outcome.failures[-1] if outcome.failures else None
    if last is not None and last.reason == "rate_limited":
        wait = math.ceil(last.retry_after or 1)
        return ApiError(
            429,
            f"every tier is at its rate limit (prompt {outcome.prompt_id}): {reasons}",
            type_="rate_limit_error",
            code="rate_limit_exceeded",
            headers={**trace_headers(outcome), "Retry-After": str(wait)},
        )
    return ApiError(
        502,
        f"every tier failed (prompt {outcome.prompt_id}): {reasons or 'no answer'}",
        type_="upstream_error",
        code="all_tiers_failed",
        headers=trace_headers(outcome),
    )


# --- streaming (`stream: true`) -------------------------------------------------------------

_PIECES = re.compile(r"\s*\S+\s*|\s+")


def stream_chunks(call: ChatCall, outcome: LiveOutcome) -> Iterator[dict[str, Any]]:
    """The final answer as OpenAI's `chat.completion.chunk` objects: the role, the content
    a token at a time (split by the logprobs' tokens when the model sent them, else by
    words), any tool calls, the finish reason, then the usage when the caller asked."""
    body = completion_body(call, outcome)
    choice = body["choices"][0]
    message = choice.get("message") or {}
    head = {k: body[k] for k in ("id", "created", "model", "system_fingerprint")}
    head["object"] = "chat.completion.chunk"
    usage: dict[str, Any] = {"usage": None} if call.include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        part = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}
        return {**head, "choices": [part], **usage}

    yield chunk({"role": "assistant", "content": ""})
    for piece, logprobs in _content_pieces(outcome, call.logprobs):
        yield chunk({"content": piece}, logprobs=logprobs)
    if message.get("tool_calls"):
        calls = [{"index": n, **tool} for n, tool in enumerate(message["tool_calls"])]
        yield chunk({"tool_calls": calls})
    yield chunk({}, choice.get("finish_reason") or "stop")
    if call.include_usage:
        yield {**head, "choices": [], "usage": body["usage"]}


def _content_pieces(
    outcome: LiveOutcome, with_logprobs: bool
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    assert outcome.completion is not None
    text = outcome.completion.text
    upstream = ((outcome.completion.body or {}).get("choices") or [{}])[0]
    tokens = (upstream.get("logprobs") or {}).get("content") or []
    if tokens and "".join(str(t.get("token", "")) for t in tokens) == text:
        for token in tokens:
            yield str(token["token"]), ({"content": [token]} if with_logprobs else None)
        return
    for piece in _PIECES.findall(text):
        yield piece, None


def sse(event: dict[str, Any] | str) -> bytes:
    data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


@dataclass(slots=True)
class Relayed:
    """A kept tier's streamed chunks (`stream_holdback_tokens`) as the gateway's own: its
    id, the tier as `model`, logprobs only if the caller asked, and the usage chunk only
    if it set `stream_options.include_usage` (the tier is always asked for it: the ledger
    and the limits need it)."""

    call: ChatCall
    outcome: LiveOutcome
    first_byte_s: float = 0.0

    def chunks(self, events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for event in events:
            head = {
                "id": completion_id(self.outcome),
                "object": "chat.completion.chunk",
                "created": int(event.get("created") or time.time()),
                "model": self.outcome.final_tier,
                "system_fingerprint": event.get("system_fingerprint"),
            }
            if event.get("choices"):
                choices = [self._choice(choice) for choice in event["choices"]]
                usage = {"usage": None} if self.call.include_usage else {}
                yield {**head, "choices": choices, **usage}
            if self.call.include_usage and event.get("usage"):
                yield {**head, "choices": [], "usage": event["usage"]}

    def _choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        relayed = {**choice, "index": 0}
        if not self.call.logprobs:
            relayed["logprobs"] = None
        return relayed


def stream_error(message: str) -> ApiError:
    """What ends a stream whose tier failed after some of its answer was sent: an error
    event in OpenAI's shape (the SDK raises `APIError` on it), never another tier's answer."""
    return ApiError(
        502,
        f"the answer is incomplete: {message}",
        type_="upstream_error",
        code="stream_interrupted",
    )
