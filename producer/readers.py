"""Read a user's prompt file and validate all of it before anything is stored.

Accepted formats (chosen by file extension):

* JSON Lines (``.jsonl``, ``.ndjson``, ``.json``): one JSON object per line, either
  ``{"prompt": "..."}``, ``{"messages": [...]}`` or an OpenAI Batch API request line.
* CSV (``.csv``): a header row with a ``prompt`` column, plus optional ``custom_id``,
  ``system`` and ``metadata`` columns; any other column becomes a metadata entry.

``read_prompts`` either returns every prompt or raises ``InputFileError`` listing every bad
line as ``PATH:LINE: reason``. Nothing is ever partially accepted, so a user fixes the whole
file in one round instead of discovering problems one submission at a time.

Standard library only: this module sits at the edge of the system and must stay importable
(and testable) without the database, the broker or any settings.
"""

import csv
import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from workers.errors import BadInput

__all__ = [
    "DEFAULT_MAX_PROMPT_CHARS",
    "InputFileError",
    "PromptInput",
    "iter_prompts",
    "read_prompts",
]

DEFAULT_MAX_PROMPT_CHARS = 200_000

# Lines are read in binary with this cap so a pathological file (say a 2 GB single line)
# cannot exhaust memory. It is far above any sane prompt, so ordinary long prompts still get
# the precise "prompt is N characters" message. Module-level so tests can lower it.
HARD_MAX_LINE_BYTES = 64 * 1024 * 1024

MAX_PROBLEMS_SHOWN = 20

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv",)

MESSAGE_ROLES = ("system", "user", "assistant", "developer")
CHAT_COMPLETIONS_URL = "/v1/chat/completions"

FORMATS_HINT = (
    "Accepted formats: JSON Lines (.jsonl, .ndjson, .json) with one object per line, "
    'e.g. {"prompt": "..."}, {"messages": [...]} or an OpenAI Batch API request; '
    "or CSV (.csv) with a header row that has a 'prompt' column."
)

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # also the start of the UTF-32 BOMs
_SNIFF_BYTES = 8192
_MAX_CONTROL_BYTE_SHARE = 0.05
# Control bytes that never appear in ordinary text; tab, newlines, form feed and ESC do.
_BINARY_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f\x1b") + b"\x7f"
_NOT_BINARY_CONTROL_BYTES = bytes(b for b in range(256) if b not in _BINARY_CONTROL_BYTES)

# strict=False accepts raw control characters (tabs, etc.) inside strings: they are valid
# text that sloppy exporters emit, and we promise to accept them unchanged.
_JSON_DECODER = json.JSONDecoder(strict=False)

# Matches a high surrogate escape together with the low one that should follow it, or a
# surrogate escape on its own; only a 6-character match (no partner) is a lone surrogate.
# Starting with the literal backslash-u-d keeps the scan fast on long lines.
_SURROGATE_ESCAPES = re.compile(
    r"\\u[dD](?:[89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?|[c-fC-F][0-9a-fA-F]{2})"
)
_LONE_SURROGATE_ESCAPE_LENGTH = len("\\ud800")

# Python's csv messages are terse; these say what the user should actually fix.
_CSV_ERROR_HINTS = {
    "unexpected end of data": (
        'a quoted field starting in this record is never closed (missing ")'
    ),
    "',' expected after '\"'": (
        'text right after a closing quote; inside a quoted field write " as ""'
    ),
}


# ---------------------------------------------------------------------------- public API


@dataclass(frozen=True, slots=True)
class PromptInput:
    """One validated prompt, ready to be stored."""

    messages: list[dict[str, str]]  # OpenAI chat messages, each {"role": ..., "content": ...}
    custom_id: str | None
    metadata: dict[str, Any] | None
    line: int  # 1-based; for CSV, the line where the record starts


class InputFileError(BadInput):
    """The prompt file was rejected; ``problems`` lists every problem found."""

    problems: list[str]
    # Shown after the problems; a subclass whose problems are not about the format drops it.
    hint: str | None = FORMATS_HINT

    def __init__(self, problems: Iterable[str] | str) -> None:
        # A lone string is one problem, not a sequence of one-character problems.
        listed = [problems] if isinstance(problems, str) else list(problems)
        # The list is the only constructor argument so the exception survives pickling
        # (Celery ships exceptions between processes) with `problems` intact.
        super().__init__(listed)
        self.problems = listed

    def __str__(self) -> str:
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        lines = list(shown)
        hidden = len(self.problems) - len(shown)
        if hidden:
            lines.append(f"... and {hidden} more {'problem' if hidden == 1 else 'problems'}")
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)

    def format_message(self) -> str:
        # Raised before anything of the file is stored or enqueued (submit checks it whole).
        return f"{self}\nnothing was stored or enqueued"


def read_prompts(
    path: str | Path, *, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
) -> list[PromptInput]:
    """Return every prompt in the file, or raise InputFileError listing every problem."""
    return list(iter_prompts(path, max_prompt_chars=max_prompt_chars))


def iter_prompts(
    path: str | Path, *, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
) -> Iterator[PromptInput]:
    """Yield valid prompts while reading; raise InputFileError at the end if any were bad.

    Streaming is for callers that want to, say, count or buffer as they go. Because the
    error only comes once the whole file has been read, do not store or enqueue anything
    until the iterator is exhausted; ``read_prompts`` does exactly that.
    """
    if max_prompt_chars < 1:
        raise ValueError(f"max_prompt_chars must be positive, got {max_prompt_chars}")
    file_path = Path(path)
    log = _ProblemLog(str(path))
    read_records = _reader_for(file_path, log)
    found = 0
    with _open_prompt_file(file_path, log) as stream:
        _reject_non_text(stream, log)
        raw_lines = _physical_lines(stream, _max_line_bytes(max_prompt_chars), log)
        for prompt in read_records(_decoded_lines(raw_lines, log), log, max_prompt_chars):
            found += 1
            yield prompt
    if found == 0 and not log.problems:
        log.whole_file("file is empty (no prompts)")
    if log.problems:
        raise InputFileError(log.problems)


# ------------------------------------------------------------------------- shared plumbing


class _ProblemLog:
    """Collects problems already formatted as ``PATH:LINE: reason``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []

    def at_line(self, line: int, reason: str) -> None:
        self.problems.append(f"{self.path}:{line}: {reason}")

    def whole_file(self, reason: str) -> None:
        self.problems.append(f"{self.path}: {reason}")

    def fail(self, reason: str) -> InputFileError:
        """A problem that makes reading the rest of the file pointless."""
        self.whole_file(reason)
        return InputFileError(self.problems)


class _TextLine(NamedTuple):
    number: int
    text: str
    valid_utf8: bool  # False: `text` is a lossy decode kept only so CSV parsing can go on


@dataclass(slots=True)
class _ParsedRecord:
    """What one JSON line or CSV row yielded, before the checks that span records."""

    messages: list[dict[str, str]] | None = None
    custom_id: str | None = None
    metadata: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)


_RecordReader = Callable[[Iterable[_TextLine], _ProblemLog, int], Iterator[PromptInput]]


def _reader_for(path: Path, log: _ProblemLog) -> _RecordReader:
    if path.is_dir():
        raise log.fail("is a directory, not a file")
    suffix = path.suffix.lower()  # Windows users send PROMPTS.CSV
    if suffix in JSON_LINES_SUFFIXES:
        return _read_json_lines
    if suffix in CSV_SUFFIXES:
        return _read_csv
    shown = f"'{path.suffix}'" if path.suffix else "(no extension)"
    raise log.fail(f"unsupported file type {shown}; use .jsonl or .csv")


def _open_prompt_file(path: Path, log: _ProblemLog) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise log.fail("file not found") from None
    except IsADirectoryError:
        raise log.fail("is a directory, not a file") from None
    except PermissionError:
        raise log.fail("cannot read the file (permission denied)") from None
    except OSError as error:
        raise log.fail(f"cannot read the file ({error.strerror or error})") from None


def _reject_non_text(stream: IO[bytes], log: _ProblemLog) -> None:
    """Fail once for a binary or UTF-16 file instead of once per garbled line."""
    head = stream.read(_SNIFF_BYTES)
    stream.seek(0)
    if head.startswith(_UTF16_BOMS):
        raise log.fail("file is UTF-16 encoded; save it as UTF-8")
    if _looks_binary(head):
        raise log.fail("looks like a binary file, not JSON Lines/CSV text")


def _looks_binary(head: bytes) -> bool:
    if not head:
        return False
    if b"\x00" in head:
        return True
    control_bytes = len(head.translate(None, _NOT_BINARY_CONTROL_BYTES))
    return control_bytes / len(head) > _MAX_CONTROL_BYTE_SHARE


def _max_line_bytes(max_prompt_chars: int) -> int:
    # A character can take up to 6 bytes as a JSON \uXXXX escape; leave room for the rest.
    return max(HARD_MAX_LINE_BYTES, 8 * max_prompt_chars)


def _physical_lines(
    stream: IO[bytes], max_line_bytes: int, log: _ProblemLog
) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, bytes) pairs, never holding more than max_line_bytes of one line.

    An over-long line is reported and replaced by an empty line, which keeps the line
    numbering (and CSV record boundaries) of everything after it intact.
    """
    number = 0
    while raw := stream.readline(max_line_bytes + 1):
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            size = len(raw) + _skip_rest_of_line(stream)
            log.at_line(number, f"line is {size} bytes, over the limit of {max_line_bytes} bytes")
            raw = b"\n"
        yield number, raw


def _skip_rest_of_line(stream: IO[bytes]) -> int:
    skipped = 0
    while chunk := stream.readline(1024 * 1024):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _decoded_lines(raw_lines: Iterable[tuple[int, bytes]], log: _ProblemLog) -> Iterator[_TextLine]:
    for number, raw in raw_lines:
        if number == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]  # Excel and Notepad add it; it is not content
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            log.at_line(number, _utf8_reason(raw, error))
            yield _TextLine(number, raw.decode("utf-8", errors="replace"), valid_utf8=False)
        else:
            yield _TextLine(number, text, valid_utf8=True)


def _utf8_reason(raw: bytes, error: UnicodeDecodeError) -> str:
    # Everything before error.start decoded fine, so its length is the character column.
    column = len(raw[: error.start].decode("utf-8")) + 1
    bad_byte = raw[error.start]
    return f"not valid UTF-8 (byte 0x{bad_byte:02x} at column {column}); save the file as UTF-8"


def _accepted_prompt(
    record: _ParsedRecord,
    line: int,
    seen_ids: dict[str, int],
    log: _ProblemLog,
    max_prompt_chars: int,
) -> PromptInput | None:
    """Apply the checks shared by both formats; log problems, or return the prompt."""
    reasons = list(record.reasons)
    if record.messages is not None:
        length = sum(len(message["content"]) for message in record.messages)
        if length > max_prompt_chars:
            reasons.append(f"prompt is {length} characters, over the limit of {max_prompt_chars}")
    if record.custom_id is not None:
        first_line = seen_ids.setdefault(record.custom_id, line)
        if first_line != line:
            reasons.append(
                f"duplicate custom_id {record.custom_id!r} (first seen on line {first_line})"
            )
    for reason in reasons:
        log.at_line(line, reason)
    if reasons or record.messages is None:
        return None
    return PromptInput(record.messages, record.custom_id, record.metadata, line)


# A path into nested JSON as a linked list: (parent link, key or index), None at the root.
_PathLink = tuple[Any, str | int] | None


def _unstorable_text(value: Any, location: str) -> str | None:
    """Describe the first string under `value` that the database cannot store, if any.

    Iterative rather than recursive: the JSON decoder allows nesting close to the recursion
    limit, and a recursive walk on top of that could overflow. Paths are kept as cheap
    (parent, step) links and only spelled out for the one string that is reported.
    """
    pending: deque[tuple[Any, _PathLink]] = deque([(value, None)])
    while pending:
        item, link = pending.popleft()
        if isinstance(item, str):
            problem = _unstorable_string(item)
            if problem:
                return f"{_path_text(location, link) or 'a value'} contains {problem}"
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = _unstorable_string(str(key))
                if problem:
                    where = _path_text(location, link) or "the object"
                    return f"a key in {where} contains {problem}"
                pending.append((child, (link, key)))
        elif isinstance(item, list):
            pending.extend((child, (link, index)) for index, child in enumerate(item))
    return None


def _path_text(location: str, link: _PathLink) -> str:
    steps: list[str | int] = []
    while link is not None:
        link, step = link
        steps.append(step)
    text = location
    for step in reversed(steps):
        if isinstance(step, int):
            text += f"[{step}]"
        else:
            text = f"{text}.{step}" if text else step
    return text


def _unstorable_string(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (U+0000), which PostgreSQL cannot store; remove it"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        # Only reachable through a JSON escape such as "\ud800" with no partner.
        code = ord(text[error.start])
        return f"an unpaired surrogate (U+{code:04X}), which is not valid Unicode"
    return None


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, as the user wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chat_messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages


# ---------------------------------------------------------------------------- JSON Lines


def _read_json_lines(
    lines: Iterable[_TextLine], log: _ProblemLog, max_prompt_chars: int
) -> Iterator[PromptInput]:
    seen_ids: dict[str, int] = {}
    first_content_line = True
    for number, text, valid_utf8 in lines:
        if not text or text.isspace():
            continue
        if first_content_line:
            first_content_line = False
            wrong_shape = _not_json_lines(text)
            if wrong_shape:
                log.at_line(number, wrong_shape)
                return  # every further line would only repeat the same mistake
        if not valid_utf8:
            continue  # already reported; parsing the lossy text would add noise
        record = _record_from_json_line(text)
        prompt = _accepted_prompt(record, number, seen_ids, log, max_prompt_chars)
        if prompt:
            yield prompt


def _not_json_lines(first_line: str) -> str | None:
    """Recognise whole-file JSON (rather than JSON Lines) from its first non-blank line."""
    stripped = first_line.strip()
    if stripped.startswith("["):
        return (
            "the file is a JSON array; JSON Lines wants one object per line "
            "(e.g. `jq -c '.[]' FILE`)"
        )
    if stripped == "{":
        return (
            "the file looks like pretty-printed JSON; JSON Lines wants each object on a "
            "single line (e.g. `jq -c . FILE`)"
        )
    return None


def _record_from_json_line(text: str) -> _ParsedRecord:
    record = _ParsedRecord()
    try:
        value = _JSON_DECODER.decode(text)
    except json.JSONDecodeError as error:
        record.reasons.append(f"invalid JSON ({error.msg} at column {error.colno})")
        return record
    except RecursionError:
        record.reasons.append("invalid JSON (nested too deeply)")
        return record
    except ValueError as error:  # e.g. an integer with more digits than Python will convert
        record.reasons.append(f"invalid JSON ({error})")
        return record
    if not isinstance(value, dict):
        record.reasons.append(f"expected a JSON object, got {_json_type(value)}")
        return record
    record.messages = _messages_from_object(value, record.reasons)
    record.custom_id = _custom_id_from(value, record.reasons)
    record.metadata = _metadata_from(value, record.reasons)
    if _may_hold_unstorable(text):
        unstorable = _unstorable_text(_stored_fields(value), "")
        if unstorable:
            record.reasons.append(unstorable)
    return record


def _may_hold_unstorable(json_text: str) -> bool:
    """Cheap test on the raw line so that only suspicious lines pay for walking the value.

    A NUL can only come from a raw NUL or a \\u0000 escape, and a lone surrogate only from
    an escape (strict UTF-8 decoding already rejected encoded ones). Properly paired
    surrogate escapes, which json.dumps writes for every emoji, must stay on the fast path.
    """
    if "\x00" in json_text or "\\u0000" in json_text:
        return True
    if "\\ud" not in json_text and "\\uD" not in json_text:
        return False
    return any(
        len(match.group()) == _LONE_SURROGATE_ESCAPE_LENGTH
        for match in _SURROGATE_ESCAPES.finditer(json_text)
    )


def _stored_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The parts of a line that end up in the database; other keys are ignored, not checked."""
    stored_keys = ("prompt", "system", "messages", "custom_id", "metadata")
    kept: dict[str, Any] = {key: obj[key] for key in stored_keys if key in obj}
    body = obj.get("body")
    if isinstance(body, dict) and "messages" in body:
        kept["body"] = {"messages": body["messages"]}
    return kept


def _messages_from_object(obj: dict[str, Any], reasons: list[str]) -> list[dict[str, str]] | None:
    shapes = [key for key in ("prompt", "messages", "body") if key in obj]
    if len(shapes) > 1:
        named = " and ".join(f'"{key}"' for key in shapes)
        reasons.append(f"has both {named}; use only one")
        return None
    if "body" in obj or "url" in obj or "method" in obj:
        return _messages_from_batch_request(obj, reasons)
    if "messages" in obj:
        return _checked_messages(obj["messages"], "messages", reasons)
    if "prompt" in obj:
        return _messages_from_prompt(obj, reasons)
    found = f" (found keys: {', '.join(list(obj)[:5])})" if obj else ""
    reasons.append(f'needs a "prompt" string or a "messages" list{found}')
    return None


def _messages_from_prompt(obj: dict[str, Any], reasons: list[str]) -> list[dict[str, str]] | None:
    prompt = obj["prompt"]
    system = _optional_system(obj.get("system"), reasons)
    if not isinstance(prompt, str):
        reasons.append(f"prompt must be a string, got {_json_type(prompt)}")
        return None
    if not prompt.strip():
        reasons.append("prompt is empty")
        return None
    return _chat_messages(prompt, system)


def _optional_system(value: Any, reasons: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        reasons.append(f"system must be a string, got {_json_type(value)}")
        return None
    return value if value.strip() else None  # an empty system prompt means "no system prompt"


def _messages_from_batch_request(
    obj: dict[str, Any], reasons: list[str]
) -> list[dict[str, str]] | None:
    url = obj.get("url")
    if url is not None and url != CHAT_COMPLETIONS_URL:
        reasons.append(f"url {_short_repr(url)} is not supported; use {CHAT_COMPLETIONS_URL!r}")
        return None
    method = obj.get("method")
    if method is not None and method != "POST":
        reasons.append(f"method {_short_repr(method)} is not supported; use 'POST'")
        return None
    body = obj.get("body")
    if not isinstance(body, dict) or "messages" not in body:
        reasons.append('a batch request needs a "body" object with a "messages" list')
        return None
    return _checked_messages(body["messages"], "body.messages", reasons)


def _checked_messages(value: Any, label: str, reasons: list[str]) -> list[dict[str, str]] | None:
    if not isinstance(value, list):
        reasons.append(f"{label} must be a list, got {_json_type(value)}")
        return None
    if not value:
        reasons.append(f"{label} is empty")
        return None
    messages = [
        _checked_message(item, f"{label}[{index}]", reasons) for index, item in enumerate(value)
    ]
    valid = [message for message in messages if message is not None]
    if len(valid) != len(messages):
        return None
    if not any(message["role"] == "user" for message in valid):
        reasons.append(f"{label} has no user message")
        return None
    if valid[-1]["role"] != "user":
        last_role = valid[-1]["role"]
        reasons.append(f"the last message in {label} must be from the user, not {last_role!r}")
        return None
    return valid


def _checked_message(item: Any, label: str, reasons: list[str]) -> dict[str, str] | None:
    if not isinstance(item, dict):
        reasons.append(f"{label} must be an object, got {_json_type(item)}")
        return None
    role = _message_role(item.get("role"), f"{label}.role", reasons)
    if "content" not in item:
        reasons.append(f"{label}.content is missing")
        return None
    content = _message_text(item["content"], f"{label}.content", reasons)
    if role is None or content is None:
        return None
    return {"role": role, "content": content}


def _message_role(role: Any, label: str, reasons: list[str]) -> str | None:
    if isinstance(role, str) and role in MESSAGE_ROLES:
        return role
    reasons.append(f"{label} must be one of {', '.join(MESSAGE_ROLES)}; got {_short_repr(role)}")
    return None


def _message_text(content: Any, label: str, reasons: list[str]) -> str | None:
    if isinstance(content, list):
        content = _joined_text_parts(content, label, reasons)
        if content is None:
            return None
    if not isinstance(content, str):
        reasons.append(f"{label} must be a string, got {_json_type(content)}")
        return None
    if not content.strip():
        reasons.append(f"{label} is empty")
        return None
    return content


def _joined_text_parts(parts: list[Any], label: str, reasons: list[str]) -> str | None:
    """Flatten OpenAI content parts; only text parts can be sent to every model tier."""
    texts = []
    for index, part in enumerate(parts):
        is_text = isinstance(part, dict) and part.get("type") == "text"
        if not is_text or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else _json_type(part)
            reasons.append(
                f'{label}[{index}] must be a {{"type": "text", "text": "..."}} part, '
                f"got {_short_repr(kind)}; only text content is supported"
            )
            return None
        texts.append(part["text"])
    # Newline-joined, the way vLLM and HF chat templates flatten multiple text parts.
    return "\n".join(texts)


def _custom_id_from(obj: dict[str, Any], reasons: list[str]) -> str | None:
    value = obj.get("custom_id")
    if value is None:
        return None
    # bool is an int subclass, but `true` as an id is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, str | int):
        reasons.append(f"custom_id must be a string or an integer, got {_json_type(value)}")
        return None
    if value == "":
        reasons.append("custom_id is an empty string; leave it out instead")
        return None
    return str(value)


def _metadata_from(obj: dict[str, Any], reasons: list[str]) -> dict[str, Any] | None:
    value = obj.get("metadata")
    if value is None:
        return None
    if not isinstance(value, dict):
        reasons.append(f"metadata must be a JSON object, got {_json_type(value)}")
        return None
    return value


# ------------------------------------------------------------------------------------ CSV


@dataclass(frozen=True, slots=True)
class _CsvColumns:
    """Where each meaningful column sits in a row, worked out once from the header."""

    names: tuple[str, ...]
    prompt: int
    custom_id: int | None
    system: int | None
    metadata: int | None
    extra: tuple[int, ...]  # named columns that become metadata entries


def _read_csv(
    lines: Iterable[_TextLine], log: _ProblemLog, max_prompt_chars: int
) -> Iterator[PromptInput]:
    _allow_csv_fields_up_to(_max_line_bytes(max_prompt_chars))
    seen_ids: dict[str, int] = {}
    columns: _CsvColumns | None = None
    data_rows = 0
    for start_line, row in _csv_rows((line.text for line in lines), log):
        if all(not cell.strip() for cell in row):
            continue  # blank lines and rows of empty cells, as spreadsheets export them
        if columns is None:
            columns_or_reason = _csv_columns(row)
            if isinstance(columns_or_reason, str):
                log.at_line(start_line, columns_or_reason)
                return  # without a known prompt column no row can be checked
            columns = columns_or_reason
            continue
        data_rows += 1
        record = _record_from_csv_row(row, columns)
        prompt = _accepted_prompt(record, start_line, seen_ids, log, max_prompt_chars)
        if prompt:
            yield prompt
    if columns is not None and data_rows == 0:
        log.whole_file("file is empty (no prompts; the CSV has only a header row)")


def _allow_csv_fields_up_to(limit: int) -> None:
    # The csv default (131072 characters) is below DEFAULT_MAX_PROMPT_CHARS, so legitimate
    # prompts would fail. The setting is process-wide, hence only ever raised, never lowered.
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


def _csv_rows(texts: Iterable[str], log: _ProblemLog) -> Iterator[tuple[int, list[str]]]:
    """Yield (line where the record starts, fields), logging malformed records."""
    # strict: an unclosed quote is an error instead of silently eating the rest of the file.
    reader = csv.reader(texts, strict=True)
    start_line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            message = str(error)
            log.at_line(start_line, f"invalid CSV ({_CSV_ERROR_HINTS.get(message, message)})")
        else:
            yield start_line, row
        start_line = reader.line_num + 1


def _csv_columns(header: list[str]) -> _CsvColumns | str:
    """Map the header row to columns, or explain why it cannot be used."""
    names = tuple(name.strip() for name in header)
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        return f"CSV header repeats column {', '.join(repr(name) for name in repeated)}"
    if "prompt" not in names:
        listed = ", ".join(name for name in names if name)
        return f"CSV has no 'prompt' column (columns: {listed}){_missing_prompt_hint(names)}"
    special = ("prompt", "custom_id", "system", "metadata")
    return _CsvColumns(
        names=names,
        prompt=names.index("prompt"),
        custom_id=names.index("custom_id") if "custom_id" in names else None,
        system=names.index("system") if "system" in names else None,
        metadata=names.index("metadata") if "metadata" in names else None,
        extra=tuple(index for index, name in enumerate(names) if name and name not in special),
    )


def _missing_prompt_hint(names: tuple[str, ...]) -> str:
    """Point at the two usual reasons a 'prompt' column is not found."""
    if any(name.lower() == "prompt" for name in names):
        return "; column names are case-sensitive, name it 'prompt'"
    if len(names) == 1 and (";" in names[0] or "\t" in names[0]):
        return "; the file seems to use ';' or tabs between fields, but CSV needs commas"
    return ""


def _record_from_csv_row(row: list[str], columns: _CsvColumns) -> _ParsedRecord:
    record = _ParsedRecord()
    if len(row) > len(columns.names):
        record.reasons.append(
            f"row has {len(row)} fields but the header has {len(columns.names)} columns "
            "(an unquoted comma in a field?)"
        )
        return record
    # Short rows are padded: spreadsheets drop trailing empty cells.
    cells = row + [""] * (len(columns.names) - len(row))
    prompt = cells[columns.prompt]
    system = cells[columns.system] if columns.system is not None else ""
    if prompt.strip():
        record.messages = _chat_messages(prompt, system if system.strip() else None)
    else:
        record.reasons.append("prompt is empty")
    if columns.custom_id is not None and cells[columns.custom_id].strip():
        record.custom_id = cells[columns.custom_id]
    record.metadata = _csv_metadata(cells, columns, record.reasons)
    record.reasons.extend(_csv_unnamed_values(cells, columns))
    if any("\x00" in cell for cell in cells):
        labelled = {_column_label(columns, index): cell for index, cell in enumerate(cells)}
        record.reasons.append(_unstorable_text(labelled, "") or "contains a NUL character")
    return record


def _csv_metadata(
    cells: list[str], columns: _CsvColumns, reasons: list[str]
) -> dict[str, Any] | None:
    metadata: dict[str, Any] = {}
    if columns.metadata is not None and cells[columns.metadata].strip():
        metadata = _metadata_cell(cells[columns.metadata], reasons)
    # Plain columns are added after the metadata cell, so an explicit column wins a clash.
    for index in columns.extra:
        if cells[index].strip():
            metadata[columns.names[index]] = cells[index]
    return metadata or None


def _metadata_cell(cell: str, reasons: list[str]) -> dict[str, Any]:
    try:
        value = _JSON_DECODER.decode(cell)
    except (ValueError, RecursionError) as error:
        detail = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        reasons.append(f"metadata column is not valid JSON ({detail})")
        return {}
    if not isinstance(value, dict):
        reasons.append(f"metadata column must hold a JSON object, got {_json_type(value)}")
        return {}
    unstorable = _unstorable_text(value, "metadata")
    if unstorable:
        reasons.append(unstorable)
    return value


def _csv_unnamed_values(cells: list[str], columns: _CsvColumns) -> list[str]:
    """Values under a blank header cell have no metadata key; refuse to drop them silently."""
    return [
        f"column {index + 1} has a value but no name in the header row"
        for index, name in enumerate(columns.names)
        if not name and cells[index].strip()
    ]


def _column_label(columns: _CsvColumns, index: int) -> str:
    return columns.names[index] or f"column {index + 1}"
