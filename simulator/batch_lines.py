"""A batch's lines: checking an input file as OpenAI's validation does, and running one line
as the chat endpoint would answer it.

An input line is `{"custom_id": ..., "method": "POST", "url": "/v1/chat/completions",
"body": {chat request}}`. The file is refused as a whole (the batch ends `failed`, its
`errors` naming each bad line) when a line is not such an object, a custom_id repeats, the
lines ask for more than one model, or the file holds more than `MAX_REQUESTS` lines.

An output line is `{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error": null}`; a line the model failed has its error body and status in `response` (it goes
to the error file), a line the batch never reached has `response: null` and an `error` with
code `batch_expired` (or `batch_cancelled`).
"""

import json
import uuid
from dataclasses import dataclass
from typing import Any

from simulator.answers import answer
from simulator.protocol import RequestError, completion_body, parse_chat_request
from simulator.tokens import count_prompt_tokens

MAX_REQUESTS = 50_000  # OpenAI's limit per input file
MAX_BYTES = 200 * 1024 * 1024
MAX_REPORTED_ERRORS = 20
CHAT_ENDPOINT = "/v1/chat/completions"
UNREACHED_MESSAGES = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed: the batch was cancelled.",
}


@dataclass(frozen=True, slots=True)
class InputLine:
    custom_id: str
    body: dict[str, Any]
    model: str


class InvalidInput(Exception):
    """The file cannot run; `errors` are OpenAI's BatchError objects."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} errors")
        self.errors = errors


def parse_input(content: bytes, endpoint: str) -> list[InputLine]:
    """Every line of a batch input file, or InvalidInput naming what is wrong."""
    if len(content) > MAX_BYTES:
        raise InvalidInput([_error("file_too_large", f"over {MAX_BYTES} bytes", None)])
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(
            [_error("invalid_json_line", "the file is not UTF-8 text", None)]
        ) from None
    lines: list[InputLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = _parse_line(raw, endpoint, seen)
        except LineProblem as problem:
            errors.append(_error(problem.code, problem.message, number, problem.param))
            continue
        seen.add(line.custom_id)
        lines.append(line)
    errors.extend(_file_errors(lines))
    if errors:
        raise InvalidInput(errors[:MAX_REPORTED_ERRORS])
    return lines


class LineProblem(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _parse_line(raw: str, endpoint: str, seen: set[str]) -> InputLine:
    try:
        line = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LineProblem("invalid_json_line", f"not JSON ({exc.msg})") from None
    if not isinstance(line, dict):
        raise LineProblem("invalid_json_line", "a line must be a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineProblem("missing_required_parameter", "custom_id is missing", "custom_id")
    if custom_id in seen:
        raise LineProblem("duplicate_custom_id", f"custom_id {custom_id!r} repeats", "custom_id")
    if line.get("method") != "POST":
        raise LineProblem("invalid_method", "method must be POST", "method")
    if line.get("url") != endpoint:
        raise LineProblem("invalid_url", f"url must be {endpoint}, as the batch's", "url")
    body = line.get("body")
    if not isinstance(body, dict):
        raise LineProblem("invalid_request", "body must be a JSON object", "body")
    try:
        request = parse_chat_request(json.dumps(body).encode("utf-8"))
    except RequestError as exc:
        raise LineProblem("invalid_request", exc.message, exc.param) from None
    return InputLine(custom_id, body, request.model)


def _file_errors(lines: list[InputLine]) -> list[dict[str, Any]]:
    errors = []
    if not lines:
        errors.append(_error("empty_file", "the input file has no requests", None))
    if len(lines) > MAX_REQUESTS:
        message = f"{len(lines)} requests; at most {MAX_REQUESTS} per batch"
        errors.append(_error("too_many_requests", message, None))
    models = sorted({line.model for line in lines})
    if len(models) > 1:
        message = f"one model per batch file, found {len(models)}: {', '.join(models[:5])}"
        errors.append(_error("mismatched_model", message, None, "body.model"))
    return errors


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


# --- running lines -----------------------------------------------------------------------


def answered_line(line: InputLine, answer_key: str | None = None) -> tuple[dict[str, Any], int]:
    """The line's output, as the chat endpoint answers the same body (`answer_key`: the
    model's answer key, simulator.answer_key); and its tokens."""
    request = parse_chat_request(json.dumps(line.body).encode("utf-8"))
    prompt_tokens = count_prompt_tokens([text for _, text in request.messages])
    result = answer(request.model, request.messages, request.seed, request.max_tokens, answer_key)
    body = completion_body(request, result, prompt_tokens, None)
    return _output(line.custom_id, 200, body), prompt_tokens + len(result.tokens)


def failed_line(line: InputLine) -> dict[str, Any]:
    """A line the model failed on (a 500 in the error file)."""
    body = {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    return _output(line.custom_id, 500, body)


def unreached_line(custom_id: str, code: str) -> dict[str, Any]:
    """A line the batch never ran: it expired or was cancelled first."""
    return {
        "id": _request_id("batch_req_"),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": UNREACHED_MESSAGES[code]},
    }


def _output(custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": _request_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": _request_id("req_"), "body": body},
        "error": None,
    }


def _request_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def to_jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
