"""Turns a finished teacher job into OpenAI chat fine-tuning files — or a live job's answers
from the teacher tier (the gateway's frontier answers), so live traffic trains the next
student.

Streams the job's rows in input order (memory stays flat however large the job), drops
and counts what should not be trained on, splits a deterministic validation set, and
records a `training_files` row with the counts and the file's sha256.
"""

import hashlib
import itertools
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models import Job, JobMode, PromptStatus, TrainingFile, session_scope
from models.db import get_write_engine
from models.queries import first_training_file
from models.training_data import AnswerRow as Row
from models.training_data import answer_rows, shadow_answer_rows
from workers.errors import NotFound
from workers.finetune_format import FormatCheck, FormatReport, check_example
from workers.settings import ReducerConfig, Settings, get_settings
from workers.tokens import CHARS, TokenCounter, counter_for, example_over


class ReduceError(NotFound):
    """The job cannot be reduced (unknown, or not a teacher job); the message says why."""


@dataclass
class Reduction:
    record: TrainingFile
    warnings: list[str]


class Filters:
    """Decides, row by row, whether an example is kept; remembers what it has seen."""

    def __init__(self, config: ReducerConfig, counter: TokenCounter = CHARS) -> None:
        self.config = config
        self.counter = counter  # the teacher tier's: an example counts as its request did
        self.refusals = tuple(p.lower() for p in config.refusal_prefixes)
        self.seen: set[bytes] = set()

    def reject_reason(self, row: Row, example: dict[str, Any]) -> str | None:
        """Why the example is dropped, or None to keep it."""
        return self.judge(row, example)[0]

    def judge(self, row: Row, example: dict[str, Any]) -> tuple[str | None, bytes]:
        """(why the example is dropped or None, its JSONL line). The line is serialised once,
        for the duplicate digest and for the file, and only once the content rules pass
        (b"" before that)."""
        reason = self._content_reason(row, example)
        if reason:
            return reason, b""
        line = jsonl_line(example)
        return self._duplicate_reason(line), line

    def _content_reason(self, row: Row, example: dict[str, Any]) -> str | None:
        answer = (row.response or "").strip()
        if row.status != PromptStatus.SUCCEEDED or not answer:
            return "no_answer"
        if answer.lower().startswith(self.refusals):
            return "refusal"
        if len(answer) < self.config.min_length:
            return "too_short"
        if example_over(example["messages"], self.counter, self.config.max_example_tokens):
            return "too_long"
        return None

    def _duplicate_reason(self, line: bytes) -> str | None:
        # build_example fixes every key order, so equal examples serialise to equal lines.
        digest = hashlib.blake2b(line, digest_size=16).digest()
        if digest in self.seen:
            return "duplicate"
        self.seen.add(digest)
        return None


def in_validation(job_id: int, idx: int, fraction: float) -> bool:
    """A stable split: the same job always puts the same rows in validation."""
    digest = hashlib.sha256(f"{job_id}:{idx}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def build_example(row: Row, system_prompt: str | None) -> dict[str, Any]:
    messages = [
        # fine-tuning knows no "developer" role
        {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
        for m in row.messages
    ]
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    messages.append({"role": "assistant", "content": (row.response or "").strip()})
    return {"messages": messages}


# What json.dumps(example, ensure_ascii=False) builds on every call, built once.
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def jsonl_line(example: dict[str, Any]) -> bytes:
    return (_ENCODER.encode(example) + "\n").encode()


def validation_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".validation" + out.suffix)


class _HashingWriter:
    """Writes JSONL lines to a temporary file, hashing as it goes, renamed into place at the end
    so a crash never leaves a half-written training file under the final name."""

    def __init__(self, path: Path, check: FormatCheck | None = None) -> None:
        self.path = path
        # Its own name: two reducers of one job (a re-sent reduce message) never share it.
        self.tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self.file: IO[bytes] = self.tmp.open("wb")
        self.sha = hashlib.sha256()
        self.lines = 0
        # Checked as the lines are written, so the file is never read back to check it.
        self.check = check

    def write(self, line: bytes, example: dict[str, Any]) -> None:
        """`line` is `jsonl_line(example)`."""
        self.file.write(line)
        self.sha.update(line)
        self.lines += 1
        if self.check is not None:
            self.check.add(check_example(example))

    def close(self, *, keep_empty: bool = True) -> None:
        self.file.close()
        if self.lines or keep_empty:
            os.replace(self.tmp, self.path)
        else:  # nothing to keep: nor an earlier run's file under that name
            self.tmp.unlink()
            self.path.unlink(missing_ok=True)


def reduce_job(
    *,
    engine: Engine,
    job_id: int,
    out: Path,
    config: ReducerConfig,
    counter: TokenCounter | None = None,
    once: bool = False,
) -> Reduction:
    """`counter` counts the examples; None: the teacher tier's, in the process's settings.
    `once`: the automatic reduce of a finished job, which records its file only if the job
    has none yet (two copies of its message may run at the same moment; both write the same
    bytes, and one row is kept). `distillery reduce` writes a new file on purpose."""
    with Session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise ReduceError(f"job {job_id} not found")
        system_prompt = job.params.get("system_prompt") if config.include_system_prompt else None
        params = reducible_params(job, get_settings())
        counter = counter or teacher_counter(params, get_settings())
        out.parent.mkdir(parents=True, exist_ok=True)
        validation = validation_path_for(out)
        check = FormatCheck(out)  # the training file's only, as check_file read back only it
        train, valid = _HashingWriter(out, check), _HashingWriter(validation)
        rows = answer_rows(session=session, job_id=job_id)
        if job.mode == JobMode.LIVE:  # its teacher answers, then its shadows' (teacher too)
            own = answer_rows(session=session, job_id=job_id, final_tier=params["tier"])
            rows = itertools.chain(own, shadow_answer_rows(session=session, live_job_id=job_id))
        filters = Filters(config, counter)
        rejected = _write_examples(rows, system_prompt, job_id, filters, train, valid)
        train.close()
        valid.close(keep_empty=False)
    return _record(engine, job_id, train, valid, rejected, check.finish(), once=once)


def reducible_params(job: Job, settings: Settings) -> dict[str, Any]:
    """A job's params as the reducer reads them: a live job (which has no teacher tier of
    its own) is reduced to the answers of the config's teacher tier."""
    if job.mode == JobMode.LIVE:
        return {**job.params, "tier": settings.teacher.tier}
    if job.mode != JobMode.TEACHER:
        raise ReduceError(f"job {job.id} is a {job.mode} job; teacher and live jobs are reduced")
    return job.params


def teacher_counter(params: dict[str, Any], settings: Settings) -> TokenCounter:
    """How the job's teacher tier counted its requests; characters when it is gone from the
    config (a job outlives its config)."""
    tier = settings.tiers.get(params.get("tier", ""))
    return CHARS if tier is None else counter_for(tier)


def _write_examples(
    rows: Iterator[Row],
    system_prompt: str | None,
    job_id: int,
    filters: Filters,
    train: _HashingWriter,
    valid: _HashingWriter,
) -> Counter[str]:
    """Build, filter and write every row's example; returns the rejected counts by reason."""
    rejected = Counter[str]()
    fraction = filters.config.validation_fraction
    for row in rows:
        example = build_example(row, system_prompt)
        reason, line = filters.judge(row, example)
        if reason:
            rejected[reason] += 1
        elif fraction > 0 and in_validation(job_id, row.idx, fraction):  # 0: skip the hash
            valid.write(line, example)
        else:
            train.write(line, example)
    return rejected


def _record(
    engine: Engine,
    job_id: int,
    train: _HashingWriter,
    valid: _HashingWriter,
    rejected: Counter[str],
    report: FormatReport,
    *,
    once: bool,
) -> Reduction:
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
    if not once:
        with session_scope(engine) as session:
            session.add(record)
        return Reduction(record, report.warnings)
    # Checked and written in one write transaction, the job's row locked (PostgreSQL) or the
    # database's write lock taken first (SQLite), so two reducers cannot both find no file.
    writes = get_write_engine(engine.url.render_as_string(hide_password=False))
    with session_scope(writes) as session:
        session.execute(select(col(Job.id)).where(col(Job.id) == job_id).with_for_update())
        existing = first_training_file(session=session, job_id=job_id)
        if existing is not None:
            return Reduction(existing, report.warnings)
        session.add(record)
    return Reduction(record, report.warnings)
