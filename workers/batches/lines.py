"""A batch's lines: a prompt's request line in the input file, packing lines into files
within the tier's limits, and reading the output and error files back by custom_id.

The custom_id is ours (`prompt-<id>`), not the user's: it names exactly one prompt row,
whatever the input file's own ids were, so a line can never be matched to the wrong prompt.
The provider's output order means nothing (it differs from the input's)."""

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from models import AttemptStatus
from workers.answer import WorkItem
from workers.chat import CallError, Completion, completion_from_json
from workers.settings import TierConfig

log = logging.getLogger(__name__)

CUSTOM_ID_PREFIX = "prompt-"
CHAT_URL = "/v1/chat/completions"

Line = tuple[int, bytes]  # (prompt id, the JSONL line with its newline)


def custom_id(prompt_id: int) -> str:
    return f"{CUSTOM_ID_PREFIX}{prompt_id}"


def prompt_id_of(value: Any) -> int | None:
    if not isinstance(value, str) or not value.startswith(CUSTOM_ID_PREFIX):
        return None
    digits = value.removeprefix(CUSTOM_ID_PREFIX)
    return int(digits) if digits.isdigit() else None


def request_line(item: WorkItem, tier: TierConfig) -> Line:
    """The input-file line of one prompt: the same request an online call sends."""
    body = item.chat_request().body(tier.model)
    line = {"custom_id": custom_id(item.prompt_id), "method": "POST", "url": CHAT_URL, "body": body}
    return item.prompt_id, (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")


def pack(lines: Sequence[Line], *, max_requests: int, max_bytes: int) -> Iterator[list[Line]]:
    """Consecutive groups of lines, each within `max_requests` lines and `max_bytes` bytes
    (a single line over `max_bytes` goes alone; the provider refuses it, and says so)."""
    group: list[Line] = []
    size = 0
    for line in lines:
        if group and (len(group) >= max_requests or size + len(line[1]) > max_bytes):
            yield group
            group, size = [], 0
        group.append(line)
        size += len(line[1])
    if group:
        yield group


@dataclass(frozen=True, slots=True)
class LineResult:
    """One prompt's line in the output or error file: its answer, or how it failed."""

    completion: Completion | None = None
    error: CallError | None = None


@dataclass(slots=True)
class Results:
    by_prompt: dict[int, LineResult] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # why each ignored line was ignored


def read_results(output: bytes, errors: bytes, *, expected: set[int], latency_ms: float) -> Results:
    """Each expected prompt's first line, the output file before the error file. A line
    whose custom_id names no prompt of this batch, or repeats one already read, is ignored
    and logged: it must never count twice, nor land on another prompt."""
    results = Results()
    for raw in [*output.splitlines(), *errors.splitlines()]:
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            results.ignored.append("a line that is not JSON")
            continue
        prompt_id = prompt_id_of(line.get("custom_id") if isinstance(line, dict) else None)
        if prompt_id is None or prompt_id not in expected:
            results.ignored.append(f"unknown custom_id {_shown(line)}")
        elif prompt_id in results.by_prompt:
            results.ignored.append(f"repeated custom_id {_shown(line)}")
        else:
            results.by_prompt[prompt_id] = line_result(line, latency_ms)
    for reason in results.ignored:
        log.warning("batch output: ignored %s", reason)
    return results


def _shown(line: Any) -> str:
    value = line.get("custom_id") if isinstance(line, dict) else None
    return repr(value)[:80]


def line_result(line: dict[str, Any], latency_ms: float) -> LineResult:
    """An output or error line as the answer it carries, or as a failed call."""
    response = line.get("response")
    if isinstance(response, dict) and response.get("status_code") == 200:
        try:
            return LineResult(completion=completion_from_json(response.get("body"), latency_ms))
        except CallError as error:
            return LineResult(error=error)
    return LineResult(error=line_error(line, latency_ms))


def line_error(line: dict[str, Any], latency_ms: float) -> CallError:
    response = line.get("response")
    error = line.get("error") if isinstance(line.get("error"), dict) else None
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body")
        detail = body.get("error") if isinstance(body, dict) else None
        detail = detail if isinstance(detail, dict) else {}
        message = f"HTTP {status}: {detail.get('message') or 'no message'}"
        http_status = status if isinstance(status, int) else None
        kind = AttemptStatus.RATE_LIMITED if status == 429 else AttemptStatus.ERROR
        return CallError(message, status=kind, latency_ms=latency_ms, http_status=http_status)
    code = (error or {}).get("code") or "unknown"
    message = f"{code}: {(error or {}).get('message') or 'no message'}"
    kind = AttemptStatus.TIMEOUT if code == "batch_expired" else AttemptStatus.ERROR
    return CallError(message, status=kind, latency_ms=latency_ms)
