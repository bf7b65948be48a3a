"""Turns a finished teacher job into OpenAI chat fine-tuning files — or a live job's answers
from the teacher tier (the gateway's frontier answers), so live traffic trains the next
student.

Streams the job's rows in input order, drops what should not be trained on (the content
rules of workers.quality, the judge's scores, exact and near duplicates: docs/
training-data.md), records each dropped row and why (`rejections`), splits a deterministic
validation set without prompt leakage (workers.split), writes the chosen format
(workers.exports) and its dataset card, and records a `training_files` row with the counts
and the file's sha256.
"""

import hashlib
import itertools
import os
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models import Job, JobMode, PromptStatus, TrainingFile, session_scope
from models.db import get_write_engine
from models.quality import latest_scores, record_rejections
from models.queries import first_training_file
from models.training_data import AnswerRow as Row
from models.training_data import answer_rows, shadow_answer_rows
from workers.dataset_card import card_path_for, write_card
from workers.errors import NotFound
from workers.exports import SUFFIXES, ExampleWriter, jsonl_line, writer_for
from workers.finetune_format import FormatCheck, FormatReport
from workers.near_duplicates import NearDuplicateIndex
from workers.quality import is_refusal, non_text_fraction, normalise_phrases, repeat_fraction
from workers.settings import ReducerConfig, Settings, get_settings
from workers.split import Held, Split, in_validation
from workers.tokens import CHARS, TokenCounter, counter_for, example_over

__all__ = ["Filters", "ReduceError", "Reduction", "Row", "build_example", "in_validation",
           "reduce_job"]  # fmt: skip


class ReduceError(NotFound):
    """The job cannot be reduced (unknown, or not a teacher job); the message says why."""


@dataclass
class Reduction:
    record: TrainingFile
    warnings: list[str]

    @property
    def empty(self) -> bool:
        """Every row was left out: no file was written."""
        return self.record.examples == 0


class Filters:
    """Decides, row by row, whether an example is kept; remembers what it has seen. After
    `judge`, `duplicate_of` names the kept row a duplicate repeats (its prompt id)."""

    def __init__(
        self,
        config: ReducerConfig,
        counter: TokenCounter = CHARS,
        scores: Mapping[int, int | None] | None = None,
    ) -> None:
        self.config = config
        self.counter = counter  # the teacher tier's: an example counts as its request did
        self.refusals = normalise_phrases(config.refusal_phrases)
        self.truncated = frozenset(config.truncated_finish_reasons)
        self.seen: dict[bytes, int] = {}  # an example's digest: the prompt id that kept it
        threshold = config.near_duplicates
        perms = config.minhash_permutations
        self.near = NearDuplicateIndex(threshold, perms) if threshold is not None else None
        self.scores = scores  # the judge's (prompt id: score, None unscored); None: not judged
        self.duplicate_of: int | None = None

    def reject_reason(self, row: Row, example: dict[str, Any]) -> str | None:
        """Why the example is dropped, or None to keep it."""
        return self.judge(row, example)[0]

    def judge(self, row: Row, example: dict[str, Any]) -> tuple[str | None, bytes]:
        """(why the example is dropped or None, its JSONL line). The line is serialised once,
        for the duplicate digest and for the file, and only once the content rules pass
        (b"" before that)."""
        self.duplicate_of = None
        reason = self._content_reason(row, example) or self._score_reason(row)
        if reason:
            return reason, b""
        line = jsonl_line(example)
        return self._duplicate_reason(row, line), line

    def _content_reason(self, row: Row, example: dict[str, Any]) -> str | None:
        answer = (row.response or "").strip()
        config = self.config
        if row.status != PromptStatus.SUCCEEDED or not answer:
            return "no_answer"
        if row.finish_reason in self.truncated:
            return "truncated"
        if is_refusal(answer, self.refusals):
            return "refusal"
        if len(answer) < config.min_length:
            return "too_short"
        if example_over(example["messages"], self.counter, config.max_example_tokens):
            return "too_long"
        if non_text_fraction(answer) > config.max_non_text_fraction:
            return "non_text"
        if repeat_fraction(answer) >= config.degenerate_repeat_fraction:
            return "degenerate"
        return None

    def _score_reason(self, row: Row) -> str | None:
        if self.config.min_score is None:
            return None
        score = (self.scores or {}).get(row.prompt_id)
        if score is None:
            return "unscored"
        return "low_score" if score < self.config.min_score else None

    def _duplicate_reason(self, row: Row, line: bytes) -> str | None:
        # build_example fixes every key order, so equal examples serialise to equal lines.
        digest = hashlib.blake2b(line, digest_size=16).digest()
        kept = self.seen.get(digest)
        if kept is not None:
            self.duplicate_of = kept
            return "duplicate"
        if self.near is not None:
            signature = self.near.signature(texts_of(row, self.config.near_duplicate_field))
            match = self.near.match(signature) if signature is not None else None
            if match is not None:
                self.duplicate_of = match[0]
                return "near_duplicate"
            if signature is not None:
                self.near.add(row.prompt_id, signature)
        self.seen[digest] = row.prompt_id
        return None


def prompt_text(row: Row) -> str:
    """What the prompt asks: its messages' text in order, system messages left out (one
    system prompt shared by every row would make every prompt look alike)."""
    return "\n".join(
        str(m.get("content") or "")
        for m in row.messages
        if m.get("role") not in ("system", "developer")
    )


def texts_of(row: Row, field: str) -> list[str]:
    """The text near-duplicate detection compares, for the `near_duplicate_field` setting."""
    if field == "prompt":
        return [prompt_text(row)]
    if field == "answer":
        return [row.response or ""]
    return [prompt_text(row), row.response or ""]


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


def validation_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".validation" + out.suffix)


def output_path(out: Path | str, job_id: int, fmt: str) -> Path:
    """`out` as given, or `job-ID<suffix>` inside it when it is a directory (an existing
    one, or a path written with a trailing slash, as a str: Path drops the slash)."""
    if str(out).endswith(("/", os.sep)) or Path(out).is_dir():
        return Path(out) / f"job-{job_id}{SUFFIXES[fmt]}"
    return Path(out)


def check_writable(directory: Path) -> None:
    """Fail before any work, with what to do, when the output cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".distillery-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ReduceError(
            f"cannot write to {directory}: {exc.strerror or exc}; "
            "choose another place with --out DIR (or fix its permissions)"
        ) from None


def reduce_job(
    *,
    engine: Engine,
    job_id: int,
    out: Path | str,
    config: ReducerConfig,
    counter: TokenCounter | None = None,
    once: bool = False,
) -> Reduction:
    """`counter` counts the examples; None: the teacher tier's, in the process's settings.
    `once`: the automatic reduce of a finished job, which records its file only if the job
    has none yet (two copies of its message may run at the same moment; both write the same
    bytes, and one row is kept). `distillery reduce` writes a new file on purpose.

    Every row left out is recorded (a `rejections` row: reason, the row it duplicates, its
    score); when every row is, no file is written and the record says 0 examples."""
    path = output_path(out, job_id, config.format)
    check_writable(path.parent)
    with Session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise ReduceError(f"job {job_id} not found")
        system_prompt = job.params.get("system_prompt") if config.include_system_prompt else None
        params = reducible_params(job, get_settings())
        counter = counter or teacher_counter(params, get_settings())
        scores = latest_scores(session=session, job_id=job_id)
        check = FormatCheck(path) if config.format == "openai" else None
        train = writer_for(config.format, path, check)
        valid = writer_for(config.format, validation_path_for(path))
        rows = answer_rows(session=session, job_id=job_id)
        if job.mode == JobMode.LIVE:  # its teacher answers, then its shadows' (teacher too)
            own = answer_rows(session=session, job_id=job_id, final_tier=params["tier"])
            rows = itertools.chain(own, shadow_answer_rows(session=session, live_job_id=job_id))
        filters = Filters(config, counter, scores)
        try:
            written = _write_examples(rows, system_prompt, job_id, filters, train, valid)
        except BaseException:
            train.discard()
            valid.discard()
            raise
        train.close(keep_empty=False)
        valid.close(keep_empty=False)
    facts = _facts(job, params, config, system_prompt, train, valid, written, scores)
    report = check.finish() if check is not None else FormatReport()
    return _record(engine, job_id, train, valid, written, facts, report, once=once)


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


@dataclass
class Written:
    """What `_write_examples` did: the rejected rows, their counts, and the split."""

    rejected: Counter[str] = field(default_factory=Counter)
    # (prompt id, reason, the kept row's prompt id, the judge's score)
    rejections: list[tuple[int, str, int | None, int | None]] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)


def _write_examples(
    rows: Iterator[Row],
    system_prompt: str | None,
    job_id: int,
    filters: Filters,
    train: ExampleWriter,
    valid: ExampleWriter,
) -> Written:
    """Build, filter and write every row's example; validation candidates are held for
    the leakage check and written at the end."""
    written = Written()
    split = Split(job_id, filters.config)
    scores = filters.scores or {}
    for row in rows:
        example = build_example(row, system_prompt)
        reason, line = filters.judge(row, example)
        if reason:
            written.rejected[reason] += 1
            score = scores.get(row.prompt_id)
            written.rejections.append((row.prompt_id, reason, filters.duplicate_of, score))
            continue
        stratum = split.stratum(row)
        signature = split.signature(prompt_text(row)) if split.active else None
        if split.to_validation(row, stratum):
            split.held.append(Held(line, example, stratum, signature))
        else:
            train.write(line, example)
            split.trained(stratum, signature)
    moved, validation = split.settle()
    for held in moved:  # a validation candidate whose prompt is seen in training
        train.write(held.line, held.example)
    for held in validation:
        valid.write(held.line, held.example)
    written.split = split.report(validation, train.lines)
    return written


def _facts(
    job: Job,
    params: dict[str, Any],
    config: ReducerConfig,
    system_prompt: str | None,
    train: ExampleWriter,
    valid: ExampleWriter,
    written: Written,
    scores: Mapping[int, int | None] | None,
) -> dict[str, Any]:
    """What the dataset card and the record's details say."""
    settings = get_settings()
    tier = settings.tiers.get(params.get("tier", ""))
    return {
        "job_id": job.id,
        "tier": params.get("tier"),
        "model": params.get("model") or (tier.model if tier else None),
        "format": config.format,
        "path": str(train.path.resolve()),
        "examples": train.lines,
        "sha256": train.sha.hexdigest() if train.lines else "",
        "validation_path": str(valid.path.resolve()) if valid.lines else None,
        "validation_examples": valid.lines,
        "validation_sha256": valid.sha.hexdigest() if valid.lines else None,
        "rejected": dict(written.rejected),
        "split": written.split,
        "system_prompt": system_prompt,
        "job_settings": job.params,
        "reducer_settings": config.model_dump(mode="json"),
        "scores": score_distribution(scores) if scores else None,
    }


def score_distribution(scores: Mapping[int, int | None]) -> dict[str, int]:
    """How many answers got each score 1-10, and how many none."""
    counts = Counter(str(s) if s is not None else "unscored" for s in scores.values())
    ordered = [str(n) for n in range(1, 11)] + ["unscored"]
    return {key: counts[key] for key in ordered if counts[key]}


def _record(
    engine: Engine,
    job_id: int,
    train: ExampleWriter,
    valid: ExampleWriter,
    written: Written,
    facts: dict[str, Any],
    report: FormatReport,
    *,
    once: bool,
) -> Reduction:
    if report.errors:  # our own output breaking the format is a bug, never silently shipped
        raise ReduceError(
            "training file failed the format check:\n" + "\n".join(report.errors[:10])
        )
    card = card_path_for(train.path)
    if train.lines:
        write_card(card, facts)
    else:  # nothing written: no card describing a file that is not there
        card.unlink(missing_ok=True)
    record = TrainingFile(
        job_id=job_id,
        path=facts["path"],
        examples=train.lines,
        validation_path=facts["validation_path"],
        validation_examples=valid.lines,
        rejected=facts["rejected"],
        sha256=facts["sha256"],
        format=facts["format"],
        card_path=str(card.resolve()) if train.lines else None,
        details={k: facts[k] for k in ("split", "scores", "reducer_settings", "validation_sha256")},
    )
    if not once:
        with session_scope(engine) as session:
            _add_with_rejections(session, record, written)
        return Reduction(record, report.warnings)
    # Checked and written in one write transaction, the job's row locked (PostgreSQL) or the
    # database's write lock taken first (SQLite), so two reducers cannot both find no file.
    writes = get_write_engine(engine.url.render_as_string(hide_password=False))
    with session_scope(writes) as session:
        session.execute(select(col(Job.id)).where(col(Job.id) == job_id).with_for_update())
        existing = first_training_file(session=session, job_id=job_id)
        if existing is not None:
            return Reduction(existing, report.warnings)
        _add_with_rejections(session, record, written)
    return Reduction(record, report.warnings)


def _add_with_rejections(session: Session, record: TrainingFile, written: Written) -> None:
    session.add(record)
    session.flush()
    assert record.id is not None
    record_rejections(session=session, training_file_id=record.id, rows=written.rejections)
