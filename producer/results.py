"""Exporting a job's results as JSONL or CSV, streamed row by row."""

import csv
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from sqlmodel import Session

from models import Prompt, PromptStatus
from models.quality import newest_training_file, rejected_rows
from models.queries import stream_prompts
from producer.errors import UserError
from workers.errors import ExitCode

COLUMNS = [
    "idx",
    "custom_id",
    "status",
    "routed_tier",
    "final_tier",
    "confidence",
    "fell_back",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    "error",
    "prompt",
    "response",
]


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def result_record(prompt: Prompt) -> dict[str, Any]:
    return {
        "idx": prompt.idx,
        "custom_id": prompt.custom_id,
        "status": prompt.status,
        "routed_tier": prompt.routed_tier,
        "final_tier": prompt.final_tier,
        "confidence": prompt.confidence,
        "fell_back": prompt.fell_back,
        "prompt_tokens": prompt.prompt_tokens,
        "completion_tokens": prompt.completion_tokens,
        "cost_usd": prompt.cost_usd,
        "latency_ms": prompt.latency_ms,
        "error": prompt.error,
        "prompt": last_user_text(prompt.messages),
        "response": prompt.response,
        "messages": prompt.messages,
        "metadata": prompt.meta,
    }


def records(
    session: Session,
    job_id: int,
    *,
    statuses: Iterable[str] = (),
    final_tiers: Iterable[str] = (),
    fell_back: bool | None = None,
) -> Iterator[dict[str, Any]]:
    """The job's result rows; an empty `statuses` or `final_tiers` (no option given) keeps all."""
    prompts = stream_prompts(
        session=session,
        job_id=job_id,
        statuses=[PromptStatus(s) for s in statuses] or None,
        final_tiers=list(final_tiers) or None,
        fell_back=fell_back,
    )
    for prompt in prompts:
        yield result_record(prompt)


def write_jsonl(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    count = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        count += 1
    return count


def write_csv(rows: Iterator[dict[str, Any]], out: IO[str], columns: list[str] = COLUMNS) -> int:
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    return count


WRITERS = {"jsonl": write_jsonl, "csv": write_csv}

REJECTED_COLUMNS = [
    "idx",
    "custom_id",
    "reason",
    "duplicate_of",
    "score",
    "finish_reason",
    "prompt",
    "response",
    "duplicate_response",
]


def rejected_records(
    session: Session, job_id: int, *, reason: str | None = None
) -> Iterator[dict[str, Any]]:
    """The rows the job's newest reduce left out (models.quality.rejected_rows), each with
    its prompt's last user message as `prompt`. No reduce yet: a clear error."""
    record = newest_training_file(session=session, job_id=job_id)
    if record is None:
        raise UserError(
            f"job {job_id} has not been reduced yet: distillery reduce {job_id}", ExitCode.NOT_FOUND
        )
    assert record.id is not None
    for row in rejected_rows(session=session, training_file_id=record.id, reason=reason):
        yield {"prompt": last_user_text(row["messages"]), **row}


def write_rejected_csv(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    return write_csv(rows, out, REJECTED_COLUMNS)


REJECTED_WRITERS = {"jsonl": write_jsonl, "csv": write_rejected_csv}
