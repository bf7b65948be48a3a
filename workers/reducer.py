"""Turns a finished teacher job into OpenAI chat fine-tuning files.

Streams the job's rows in input order (memory stays flat however large the job), drops
and counts what should not be trained on, splits a deterministic validation set, and
records a `training_files` row with the counts and the file's sha256.
"""

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from models import Job, Prompt, PromptStatus, TrainingFile, session_scope
from workers.finetune_format import check_file
from workers.settings import ReducerConfig


class ReduceError(Exception):
    """The job cannot be reduced (unknown, or not a teacher job); the message says why."""


@dataclass(frozen=True, slots=True)
class Row:
    idx: int
    status: str
    messages: list[dict[str, Any]]
    response: str | None


@dataclass
class Reduction:
    record: TrainingFile
    warnings: list[str]


def approx_tokens(text: str) -> int:
    """~4 characters per token for English text (OpenAI's rule of thumb); no tokenizer needed."""
    return (len(text) + 3) // 4


class Filters:
    """Decides, row by row, whether an example is kept; remembers what it has seen."""

    def __init__(self, config: ReducerConfig) -> None:
        self.config = config
        self.refusals = tuple(p.lower() for p in config.refusal_prefixes)
        self.seen: set[bytes] = set()

    def reject_reason(self, row: Row, example: dict[str, Any]) -> str | None:
        answer = (row.response or "").strip()
        if row.status != PromptStatus.SUCCEEDED or not answer:
            return "no_answer"
        if answer.lower().startswith(self.refusals):
            return "refusal"
        if len(answer) < self.config.min_length:
            return "too_short"
        if (
            sum(approx_tokens(m["content"]) for m in example["messages"])
            > self.config.max_example_tokens
        ):
            return "too_long"
        digest = hashlib.blake2b(
            json.dumps(example, sort_keys=True).encode(), digest_size=16
        ).digest()
        if digest in self.seen:
            return "duplicate"
        self.seen.add(digest)
        return None


def in_validation(job_id: int, idx: int, fraction: float) -> bool:
    """A stable split: the same job always puts the same rows in validation."""
    digest = hashlib.sha256(f"{job_id}:{idx}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def build_example(row: Row, system_prompt: str | None) -> dict[str, Any]:
    messages = [{"role": m["role"], "content": m["content"]} for m in row.messages]
    if system_prompt and not any(m["role"] in ("system", "developer") for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    for message in messages:  # fine-tuning knows no "developer" role
        if message["role"] == "developer":
            message["role"] = "system"
    messages.append({"role": "assistant", "content": (row.response or "").strip()})
    return {"messages": messages}


def stream_rows(session: Session, job_id: int) -> Iterator[Row]:
    query = (
        select(col(Prompt.idx), col(Prompt.status), col(Prompt.messages), col(Prompt.response))
        .where(col(Prompt.job_id) == job_id)
        .order_by(col(Prompt.idx))
        .execution_options(yield_per=2000)
    )
    for idx, status, messages, response in session.execute(query):
        yield Row(idx, status, messages, response)


def validation_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".validation" + out.suffix)


class _HashingWriter:
    """Writes JSONL lines to a temporary file, hashing as it goes, renamed into place at the end
    so a crash never leaves a half-written training file under the final name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.file: IO[bytes] = self.tmp.open("wb")
        self.sha = hashlib.sha256()
        self.lines = 0

    def write(self, example: dict[str, Any]) -> None:
        data = (json.dumps(example, ensure_ascii=False) + "\n").encode()
        self.file.write(data)
        self.sha.update(data)
        self.lines += 1

    def close(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)


def reduce_job(*, engine: Engine, job_id: int, out: Path, config: ReducerConfig) -> Reduction:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise ReduceError(f"job {job_id} not found")
        system_prompt = job.params.get("system_prompt") if config.include_system_prompt else None
        out.parent.mkdir(parents=True, exist_ok=True)
        validation = validation_path_for(out)
        train, valid = _HashingWriter(out), _HashingWriter(validation)
        filters, rejected = Filters(config), Counter[str]()
        for row in stream_rows(session, job_id):
            example = build_example(row, system_prompt)
            reason = filters.reject_reason(row, example)
            if reason:
                rejected[reason] += 1
            elif in_validation(job_id, row.idx, config.validation_fraction):
                valid.write(example)
            else:
                train.write(example)
        train.close()
        valid.close()
    if not valid.lines:
        validation.unlink()
    return _record(engine, job_id, train, valid, rejected)


def _record(
    engine: Engine,
    job_id: int,
    train: _HashingWriter,
    valid: _HashingWriter,
    rejected: Counter[str],
) -> Reduction:
    report = check_file(train.path)
    if report.errors:  # our own output breaking the format is a bug, never silently shipped
        raise ReduceError(
            "training file failed the format check:\n" + "\n".join(report.errors[:10])
        )
    record = TrainingFile(
        job_id=job_id,
        path=str(train.path.resolve()),
        examples=train.lines,
        validation_path=str(valid.path.resolve()) if valid.lines else None,
        validation_examples=valid.lines,
        rejected=dict(rejected),
        sha256=train.sha.hexdigest(),
    )
    with session_scope(engine) as session:
        session.add(record)
    return Reduction(record, report.warnings)
