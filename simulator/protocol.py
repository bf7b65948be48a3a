"""The OpenAI chat-completions wire format: request validation, response and error bodies.

Only what the simulator needs is validated, but anything it accepts is something the real
API would accept too, so a client that works here does not break against the real thing
on a malformed request.
"""

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from simulator.answers import Answer, Message

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_TOP_LOGPROBS = 20
SYSTEM_FINGERPRINT = "fp_distillery_sim"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class RequestError(Exception):
    """A request the simulator answers with an OpenAI-style error body."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str | None = None,
        param: str | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.model = model  # for the stats, when the body got far enough to name one


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[Message]  # (role, text); non-text content parts are dropped
    seed: int | None
    max_tokens: int | None
    logprobs: bool
    top_logprobs: int
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage


def parse_chat_request(raw: bytes) -> ChatRequest:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RequestError("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("you must provide a model parameter", param="model")
    try:
        return _parse_fields(body, model)
    except RequestError as exc:
        exc.model = model
        raise


def _parse_fields(body: dict[str, Any], model: str) -> ChatRequest:
    stream = _optional(body, "stream", bool) or False
    if body.get("n", 1) not in (1, None):
        raise RequestError("The simulator only supports n=1.", param="n")
    logprobs = _optional(body, "logprobs", bool) or False
    top_logprobs = _optional(body, "top_logprobs", int) or 0
    if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise RequestError("top_logprobs must be between 0 and 20.", param="top_logprobs")
    if top_logprobs and not logprobs:
        raise RequestError("logprobs must be true when top_logprobs is set.", param="logprobs")
    _optional(body, "temperature", float)  # accepted and ignored: answers are deterministic
    return ChatRequest(
        model=model,
        messages=_parse_messages(body.get("messages")),
        seed=_optional(body, "seed", int),
        max_tokens=_max_tokens(body),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        stream=stream,
        include_usage=_include_usage(body, stream),
    )


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    """`stream_options.include_usage`; like OpenAI, stream_options without stream is an error."""
    options = _optional(body, "stream_options", dict)
    if options is None:
        return False
    if not stream:
        raise RequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    return bool(_optional(options, "include_usage", bool))


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    """The field's value, None when absent or null, RequestError when of the wrong type.
    An int is a valid float; a bool is never a valid number."""
    value = body.get(name)
    if value is None:
        return None
    allowed: tuple[type, ...] = (int, float) if kind is float else (kind,)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, allowed):
        raise RequestError(f"Invalid type for '{name}'.", param=name)
    return value


def _max_tokens(body: dict[str, Any]) -> int | None:
    """max_completion_tokens is the newer name; it wins when both are sent."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = _optional(body, name, int)
        if value is not None:
            if value < 1:
                raise RequestError(f"{name} must be at least 1.", param=name)
            return int(value)
    return None


def _parse_messages(messages: Any) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array.", param="messages")
    return [_parse_message(index, message) for index, message in enumerate(messages)]


def _parse_message(index: int, message: Any) -> Message:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise RequestError(f"{param} must be an object.", param=param)
    role = message.get("role")
    if role not in ROLES:
        raise RequestError(f"{param}.role {role!r} is not a valid role.", param=f"{param}.role")
    return role, _message_text(message.get("content"), f"{param}.content")


def _message_text(content: Any, param: str) -> str:
    if content is None:  # e.g. an assistant turn that only made tool calls
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return "\n".join(
            part["text"]
            for part in content
            if part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    raise RequestError(f"{param} must be a string or an array of content parts.", param=param)


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    fallback_type = "server_error" if status >= 500 else "invalid_request_error"
    error_type = _ERROR_TYPES.get(status, fallback_type)
    if status == 429 and code is None:
        code = "rate_limit_exceeded"
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def completion_body(
    request: ChatRequest,
    result: Answer,
    prompt_tokens: int,
    logprobs: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    completion_tokens = len(result.tokens)
    return {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.content, "refusal": None},
                "finish_reason": result.finish_reason,
                "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
