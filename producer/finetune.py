"""The `openai` backend: fine-tune a student at a provider. Check and upload the file, create
the job, record it (on the file's `training_files` row and as a `fine_tunes` row), follow
the job, and hand back the tier block that puts the fine-tuned model into the config.

OpenAI's own fine-tuning API is winding down (deprecations page, notice of 2026-05-07): no
new jobs for organisations without recent fine-tuning use, and none for anyone from
2027-01-06. The `local` backend (producer/local_finetune.py) trains on this machine.

Any OpenAI-compatible fine-tuning API will do (OpenAI, the simulator). Which one is a
tier's endpoint and key: the teacher tier's by default, the provider that wrote the
answers. The client is the openai SDK (`openai_client`), whose retries are off: a failed
upload or create is reported at once, with what was already done.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from models import FineTuneBackend, FineTuneStatus, TrainingFile, session_scope
from models.fine_tunes import create_fine_tune, fine_tune_by_provider_id
from models.training_data import (
    set_fine_tune_job_id,
    training_file_at_path,
    training_file_with_sha256,
)
from models.types import utcnow
from producer.errors import UserError
from workers.errors import ExitCode
from workers.finetune_format import check_file
from workers.settings import ConfigError, Settings, TierConfig, load_settings

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
EVENTS_SHOWN = 20
MAX_REPORTED_ERRORS = 10
DEFAULT_STUDENT_TIER = "student"
TIER_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a bare TOML key: no quoting needed
TIER_HEADER = re.compile(r"^[ \t]*\[tiers\.", re.MULTILINE)
EXIT_FOR_HTTP_STATUS = {
    400: ExitCode.BAD_INPUT,
    401: ExitCode.BAD_CONFIG,
    403: ExitCode.BAD_CONFIG,
    404: ExitCode.NOT_FOUND,
    422: ExitCode.BAD_INPUT,
}


@dataclass(frozen=True)
class Endpoint:
    """The tier whose fine-tuning API is used, and a client for it."""

    tier_name: str
    tier: TierConfig
    client: openai.OpenAI

    @property
    def base_url(self) -> str:
        return str(self.tier.base_url).rstrip("/")


@dataclass(frozen=True)
class LocalFile:
    path: Path
    examples: int
    sha256: str
    warnings: list[str] = field(default_factory=list)

    def summary(self, file_id: str) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "file_id": file_id,
            "examples": self.examples,
            "sha256": self.sha256,
        }


def openai_client(tier: TierConfig) -> openai.OpenAI:
    """The openai SDK for the provider APIs only it covers here (Files, fine-tuning). Its
    own retries are off (`max_retries=0`): a failed upload is reported, not repeated blind."""
    base_url = str(tier.base_url).rstrip("/")
    return openai.OpenAI(
        base_url=base_url, api_key=tier.api_key(), timeout=tier.timeout_s, max_retries=0
    )


def endpoint_for(settings: Settings, tier_name: str | None) -> Endpoint:
    name = tier_name or settings.teacher.tier
    tier = settings.require_tier(name, "--tier")
    client = openai_client(tier)
    return Endpoint(name, tier, client)


# --- submit ------------------------------------------------------------------------------


def submit_fine_tune(
    training: Path,
    *,
    base_model: str,
    settings: Settings,
    engine: Engine,
    validation: Path | None = None,
    suffix: str | None = None,
    tier_name: str | None = None,
) -> dict[str, Any]:
    """Check both files locally first, so a bad one uploads nothing; then upload, create
    the job and record its id on the matching `training_files` row, if there is one."""
    endpoint = endpoint_for(settings, tier_name)
    train = check_local_file(training, "training file")
    valid = check_local_file(validation, "validation file") if validation else None
    record, matched_by = find_training_record(engine, train)
    uploaded: list[str] = []
    train_id = upload(endpoint, train, uploaded)
    valid_id = upload(endpoint, valid, uploaded) if valid else None
    job = create_job(endpoint, base_model, train_id, valid_id, suffix, uploaded)
    previous = record_job_id(engine, record, job.id) if record else None
    run_id = record_run(engine, base_model, train, valid, record, job.id)
    return {
        "fine_tune_id": run_id,
        "fine_tune_job_id": job.id,
        "status": job.status,
        "model": job.model,
        "tier": endpoint.tier_name,
        "base_url": endpoint.base_url,
        "training_file": train.summary(train_id),
        "validation_file": valid.summary(valid_id) if valid and valid_id else None,
        "training_files_row": _row_summary(record, matched_by, previous),
        "warnings": train.warnings + (valid.warnings if valid else []),
    }


def check_local_file(path: Path, what: str) -> LocalFile:
    """The file's examples and sha256; UserError (nothing uploaded) when it is missing or
    breaks the chat fine-tuning format (workers.finetune_format's rules)."""
    if not path.is_file():
        raise UserError(f"{what} {path} not found; nothing was uploaded", ExitCode.BAD_INPUT)
    try:
        report = check_file(path)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text ({exc.reason}); nothing was uploaded", ExitCode.BAD_INPUT
        ) from None
    if report.errors:
        raise UserError(_format_errors(path, what, report.errors), ExitCode.BAD_INPUT)
    if report.examples == 0:
        raise UserError(f"{what} {path} is empty; nothing was uploaded", ExitCode.BAD_INPUT)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LocalFile(path.resolve(), report.examples, digest, report.warnings)


def _format_errors(path: Path, what: str, errors: list[str]) -> str:
    shown = errors[:MAX_REPORTED_ERRORS]
    more = len(errors) - len(shown)
    lines = [
        f"{what} {path} is not valid chat fine-tuning JSONL ({len(errors)} bad line(s)):",
        *shown,
    ]
    if more:
        lines.append(f"... and {more} more")
    lines.append("nothing was uploaded")
    return "\n".join(lines)


def find_training_record(engine: Engine, local: LocalFile) -> tuple[TrainingFile | None, str]:
    """The newest row with the same content (sha256), else with the same path (the file was
    edited since `reduce` wrote it), and which of the two matched; (None, "") when the
    reducer never wrote this file."""
    with Session(engine) as session:
        by_content = training_file_with_sha256(session=session, sha256=local.sha256)
        if by_content is not None:
            return by_content, "sha256"
        by_path = training_file_at_path(session=session, path=str(local.path))
        if by_path is not None:
            return by_path, "path"
    return None, ""


def upload(endpoint: Endpoint, local: LocalFile, uploaded: list[str]) -> str:
    with provider_errors(endpoint, f"uploading {local.path.name}", uploaded):
        file = endpoint.client.files.create(
            file=(local.path.name, local.path.read_bytes()), purpose="fine-tune"
        )
    uploaded.append(file.id)
    return file.id


def create_job(
    endpoint: Endpoint,
    base_model: str,
    training_file: str,
    validation_file: str | None,
    suffix: str | None,
    uploaded: list[str],
) -> Any:
    options: dict[str, Any] = {}
    if validation_file:
        options["validation_file"] = validation_file
    if suffix:
        options["suffix"] = suffix
    with provider_errors(endpoint, "creating the fine-tuning job", uploaded):
        return endpoint.client.fine_tuning.jobs.create(
            model=base_model, training_file=training_file, **options
        )


def record_job_id(engine: Engine, record: TrainingFile, job_id: str) -> str | None:
    """Sets the row's fine_tune_job_id; returns the id it replaces (a resubmission)."""
    try:
        with session_scope(engine) as session:
            set_fine_tune_job_id(session=session, record=record, fine_tune_job_id=job_id)
    except SQLAlchemyError as exc:  # the job exists now: never lose its id in a traceback
        raise UserError(
            f"fine-tune job {job_id} was created, but recording it on training_files row "
            f"{record.id} failed: {exc}",
            ExitCode.SERVICE_DOWN,
        ) from None
    return record.fine_tune_job_id


def record_run(
    engine: Engine,
    base_model: str,
    train: LocalFile,
    valid: LocalFile | None,
    record: TrainingFile | None,
    job_id: str,
) -> int:
    """The provider's job as a `fine_tunes` row (backend openai), beside the local runs."""
    with session_scope(engine) as session:
        row = create_fine_tune(
            session=session,
            backend=FineTuneBackend.OPENAI,
            base_model=base_model,
            training_path=str(train.path),
            training_sha256=train.sha256,
            validation_path=str(valid.path) if valid else None,
            validation_sha256=valid.sha256 if valid else None,
            training_file_id=record.id if record else None,
            status=FineTuneStatus.QUEUED,
            provider_job_id=job_id,
        )
        assert row.id is not None
        return row.id


PROVIDER_STATUSES = {
    "validating_files": FineTuneStatus.QUEUED,
    "queued": FineTuneStatus.QUEUED,
    "running": FineTuneStatus.RUNNING,
    "succeeded": FineTuneStatus.SUCCEEDED,
    "failed": FineTuneStatus.FAILED,
    "cancelled": FineTuneStatus.CANCELLED,
}


def sync_run(engine: Engine, status: dict[str, Any]) -> None:
    """What the provider said of its job, onto the job's `fine_tunes` row, if it has one."""
    ours = PROVIDER_STATUSES.get(str(status["status"]))
    if ours is None:
        return
    with session_scope(engine) as session:
        row = fine_tune_by_provider_id(session=session, provider_job_id=str(status["id"]))
        if row is None or row.status == ours:
            return
        row.status = ours
        row.error = (status.get("error") or {}).get("message")
        if status.get("fine_tuned_model"):
            row.artifacts = {**row.artifacts, "model": str(status["fine_tuned_model"])}
        if ours in (FineTuneStatus.SUCCEEDED, FineTuneStatus.FAILED, FineTuneStatus.CANCELLED):
            row.finished_at = utcnow()


def _row_summary(
    record: TrainingFile | None, matched_by: str, previous: str | None
) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "id": record.id,
        "job_id": record.job_id,
        "matched_by": matched_by,
        "replaced_fine_tune_job_id": previous,
    }


# --- status ------------------------------------------------------------------------------


def fine_tune_status(
    job_id: str, *, settings: Settings, tier_name: str | None, student_tier: str | None = None
) -> dict[str, Any]:
    """The job and its latest events, oldest first; with the tier block once it succeeded."""
    endpoint = endpoint_for(settings, tier_name)
    with provider_errors(endpoint, f"reading fine-tune job {job_id}"):
        job = endpoint.client.fine_tuning.jobs.retrieve(job_id)
        events = endpoint.client.fine_tuning.jobs.list_events(job_id, limit=EVENTS_SHOWN).data
    status = _job_summary(job, endpoint)
    status["events"] = [_event_summary(event) for event in reversed(events)]
    if job.status == "succeeded" and job.fine_tuned_model:
        name = student_tier or DEFAULT_STUDENT_TIER
        status["tier_block"] = tier_block(name, endpoint.tier, job)
    return status


def watch_fine_tune(
    job_id: str,
    *,
    settings: Settings,
    tier_name: str | None,
    interval_s: float,
    on_event: Callable[[dict[str, Any]], None] = lambda event: None,
    student_tier: str | None = None,
) -> dict[str, Any]:
    """Poll until the job ends, passing each event once to `on_event`."""
    seen: set[str] = set()
    while True:
        status = fine_tune_status(
            job_id, settings=settings, tier_name=tier_name, student_tier=student_tier
        )
        for event in status["events"]:
            if event["id"] not in seen:
                seen.add(event["id"])
                on_event(event)
        if status["status"] in TERMINAL_STATUSES:
            return status
        time.sleep(interval_s)


def _job_summary(job: Any, endpoint: Endpoint) -> dict[str, Any]:
    error = job.error
    return {
        "id": job.id,
        "status": job.status,
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "trained_tokens": job.trained_tokens,
        "created_at": _iso(job.created_at),
        "finished_at": _iso(job.finished_at),
        "error": {"code": error.code, "message": error.message, "param": error.param}
        if error and error.message
        else None,
        "tier": endpoint.tier_name,
        "base_url": endpoint.base_url,
        "tier_block": None,
    }


def _event_summary(event: Any) -> dict[str, Any]:
    return {
        "id": event.id,
        "created_at": _iso(event.created_at),
        "level": event.level,
        "message": event.message,
    }


def _iso(timestamp: int | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


# --- the student tier --------------------------------------------------------------------


def tier_block(name: str, tier: TierConfig, job: Any) -> str:
    """A [tiers.NAME] table for succeeded `job`'s model on the endpoint that trained it.
    Prices stay commented out: only the user knows what the provider charges."""
    lines = [
        f"# the student: {job.model} fine-tuned by {job.id}",
        f"[tiers.{name}]",
        f"base_url = {json.dumps(str(tier.base_url))}",
        f"model = {json.dumps(job.fine_tuned_model)}",
    ]
    if tier.api_key_env:
        lines.append(f"api_key_env = {json.dumps(tier.api_key_env)}")
    lines += [
        "# input_per_1k = 0.0     # USD per 1K prompt tokens: your provider's price for it",
        "# output_per_1k = 0.0    # USD per 1K completion tokens",
    ]
    return "\n".join(lines) + "\n"


def add_tier(config: Path, name: str, block: str, *, first: bool = False) -> None:
    """Add `block` to the TOML file, after its last tier (or before its first): checked as a
    whole configuration first, written atomically, so a bad edit leaves the file as it was."""
    if not TIER_NAME.fullmatch(name):
        raise UserError(
            f"tier name {name!r}: use letters, digits, '_' and '-' only", ExitCode.USAGE
        )
    text = _read_config(config)
    if name in tomllib.loads(text).get("tiers", {}):
        raise UserError(
            f"{config} already has [tiers.{name}]; choose another name", ExitCode.BAD_CONFIG
        )
    _replace_checked(config, _with_block(text, block, first=first))


def _read_config(config: Path) -> str:
    try:
        text = config.read_text(encoding="utf-8")
        tomllib.loads(text)
    except FileNotFoundError:
        raise UserError(f"config file {config} not found", ExitCode.BAD_CONFIG) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(
            f"{config}: not valid TOML ({exc}); not changed", ExitCode.BAD_CONFIG
        ) from None
    if not TIER_HEADER.search(text):
        raise UserError(
            f"{config} has no [tiers.*] tables, so it runs on the built-in tiers; a tier "
            f"added to it would replace them all. Copy the tiers from distillery.example.toml "
            f"into it first",
            ExitCode.BAD_CONFIG,
        )
    return text


def _with_block(text: str, block: str, *, first: bool) -> str:
    if first:
        match = TIER_HEADER.search(text)
        assert match is not None  # _read_config refused a file without tiers
        return text[: match.start()] + block + "\n" + text[match.start() :]
    return text.rstrip("\n") + "\n\n" + block


def _replace_checked(config: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{config.name}.", dir=config.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        shutil.copymode(config, temporary)
        load_settings(Path(temporary))
        os.replace(temporary, config)
    except ConfigError as exc:
        raise UserError(
            f"adding the tier would make {config} invalid; not changed:\n{exc}", ExitCode.BAD_CONFIG
        ) from None
    finally:
        Path(temporary).unlink(missing_ok=True)


# --- provider errors ---------------------------------------------------------------------


@contextmanager
def provider_errors(
    endpoint: Endpoint, doing: str, uploaded: list[str] | None = None
) -> Iterator[None]:
    """The API's refusals as one clear line each, naming what was already uploaded."""
    where = f"{endpoint.base_url} (tier {endpoint.tier_name})"
    done = f"\nalready uploaded: {', '.join(uploaded)}" if uploaded else ""
    try:
        yield
    except openai.APIStatusError as exc:
        code = EXIT_FOR_HTTP_STATUS.get(exc.status_code, ExitCode.ERROR)
        message = f"{doing}: {where} answered HTTP {exc.status_code}: {_api_message(exc)}{done}"
        raise UserError(message, code) from None
    except openai.APIConnectionError as exc:  # timeouts included
        raise UserError(
            f"{doing}: cannot reach {where}: {exc}{done}", ExitCode.SERVICE_DOWN
        ) from None


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message
