"""The tables of DESIGN.md. Users query these directly, so names are stable."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, Index, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.types import JSONType, StrEnumType, UTCDateTime, utcnow


class JobMode(StrEnum):
    TEACHER = "teacher"
    ROUTE = "route"
    # The gateway's requests (`distillery serve`): a job that grows one prompt per request
    # and never finishes by itself (one per UTC day by default).
    LIVE = "live"
    # Teacher answers to a sample of live requests (`[gateway] shadow_rate`), answered by
    # the workers after the live answer was returned; grows like a live job.
    SHADOW = "shadow"


# Jobs that grow a prompt at a time and are never finished by the ledger.
OPEN_ENDED_MODES = frozenset({JobMode.LIVE, JobMode.SHADOW})


class JobStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"


class PromptStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_PROMPT_STATUSES = frozenset(
    {PromptStatus.SUCCEEDED, PromptStatus.FAILED, PromptStatus.CANCELLED}
)


class AttemptStatus(StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    # Answered from the response cache: no call, cost 0, `cached_from` the original attempt.
    CACHED = "cached"


class BatchStatus(StrEnum):
    """A provider batch's status as the provider reports it, plus `preparing`: the row and
    its lines are claimed, the input file is not at the provider yet."""

    PREPARING = "preparing"
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"


# The provider is done with these: their files are final and can be read.
TERMINAL_BATCH_STATUSES = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED, BatchStatus.FAILED}
)


class AttemptPurpose(StrEnum):
    ANSWER = "answer"
    ROUTE = "route"
    JUDGE = "judge"  # a judge tier scoring an answer (`distillery judge`)


class FallbackReason(StrEnum):
    LOW_CONFIDENCE = "low_confidence"
    ERROR = "error"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSONType, nullable=nullable))


def _time(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable))


def _enum(enum_class: type[StrEnum], **field: Any) -> Any:
    return Field(sa_column=Column(StrEnumType(enum_class), nullable=False), **field)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    name: str | None = None
    mode: JobMode = _enum(JobMode)
    status: JobStatus = _enum(JobStatus, default=JobStatus.RUNNING)
    router: str | None = None
    # Per-job settings frozen at submit time (tier, system prompt, temperature, max_tokens), so
    # a config edit while the job runs does not change half of its answers.
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    source: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    fell_back: int = 0
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    finished_at: datetime | None = _time()

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.cancelled


class Prompt(SQLModel, table=True):
    __tablename__ = "prompts"
    __table_args__ = (
        UniqueConstraint("job_id", "idx"),
        Index("ix_prompts_job_status", "job_id", "status"),
        # `distillery results JOB --tier`, and per-tier questions about one job.
        Index("ix_prompts_job_final_tier", "job_id", "final_tier"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id")
    idx: int
    custom_id: str | None = None
    messages: list[dict[str, Any]] = Field(sa_column=Column(JSONType, nullable=False))
    # "metadata" is reserved by SQLAlchemy's declarative base; the column keeps the user's name.
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSONType))
    status: PromptStatus = _enum(PromptStatus, default=PromptStatus.PENDING)
    routed_tier: str | None = None
    router_score: float | None = None
    router_latency_ms: float | None = None
    final_tier: str | None = None
    response: str | None = Field(default=None, sa_column=Column(Text))
    confidence: float | None = None
    fell_back: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    # The final answer's "stop", "length" (cut at max_tokens), "content_filter", ...: the
    # reducer drops a cut-off answer (reason truncated).
    finish_reason: str | None = None
    finished_at: datetime | None = _time()
    # The provider batch this prompt is in right now (teacher jobs `--via batch`); cleared
    # when that batch's results are committed and the prompt still needs an answer.
    batch_id: int | None = Field(default=None, foreign_key="batches.id", index=True)


class Attempt(SQLModel, table=True):
    __tablename__ = "attempts"
    # Spend and call counts per tier over a time range (docs/querying.md).
    __table_args__ = (
        Index("ix_attempts_started_at", "started_at"),
        Index("ix_attempts_tier", "tier"),
    )

    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompts.id", index=True)
    purpose: AttemptPurpose = _enum(AttemptPurpose, default=AttemptPurpose.ANSWER)
    tier: str
    model: str
    status: AttemptStatus = _enum(AttemptStatus)
    http_status: int | None = None
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    confidence: float | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    finish_reason: str | None = None  # as the model sent it; None for a failed call
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    # The provider batch whose output line this is; None: an online call.
    batch_id: int | None = Field(default=None, foreign_key="batches.id", index=True)
    # A `cached` attempt: the attempt whose answer it reused (what it would have cost is
    # that attempt's cost_usd: the money the cache saved).
    cached_from: int | None = Field(default=None, foreign_key="attempts.id")


class Batch(SQLModel, table=True):
    """One provider batch (OpenAI Batch API) of a job's prompts: its files, its status as
    last polled, the provider's counts and what the ledger took from its results."""

    __tablename__ = "batches"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    tier: str
    model: str
    provider_batch_id: str | None = Field(default=None, index=True)
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    status: BatchStatus = _enum(BatchStatus, default=BatchStatus.PREPARING)
    lines: int = 0
    # The provider's request_counts, as last polled.
    provider_completed: int = 0
    provider_failed: int = 0
    # What the ledger took from the output: lines answered, lines errored (retried),
    # lines ignored (unknown or repeated custom_id), and the answered lines' cost.
    answered: int = 0
    errored: int = 0
    ignored: int = 0
    cost_usd: float = 0.0
    # The provider's errors when it refused the input file (validation failed).
    errors: list[dict[str, Any]] | None = _json()
    polls: int = 0
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    submitted_at: datetime | None = _time()
    finished_at: datetime | None = _time()  # the provider reached a terminal status
    ingested_at: datetime | None = _time()  # its results are committed (exactly once)


class CachedResponse(SQLModel, table=True):
    """The response cache: one row per request answered (models/response_cache.py). The key
    is a hash of what decides the answer (model, messages, every sampling parameter, seed:
    workers/response_cache.py), so a lookup is one primary-key probe, whatever the size."""

    __tablename__ = "response_cache"

    key: str = Field(primary_key=True, max_length=64)
    attempt_id: int = Field(foreign_key="attempts.id")
    tier: str
    model: str
    response: str = Field(sa_column=Column(Text, nullable=False))
    # Token logprobs of the answer (route jobs' confidence), when it was asked with them.
    logprobs: list[float] | None = _json()
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # what the original call cost: what each reuse saves
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class Fallback(SQLModel, table=True):
    __tablename__ = "fallbacks"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    prompt_id: int = Field(foreign_key="prompts.id", index=True)
    from_tier: str
    to_tier: str
    reason: FallbackReason = _enum(FallbackReason)
    confidence: float | None = None
    threshold: float | None = None
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class TrainingFile(SQLModel, table=True):
    __tablename__ = "training_files"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    path: str
    examples: int
    validation_path: str | None = None
    validation_examples: int = 0
    rejected: dict[str, int] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )
    sha256: str
    fine_tune_job_id: str | None = None
    # openai (chat JSONL), trl (messages JSONL), trl-prompt-completion (JSONL), parquet
    format: str = "openai"
    card_path: str | None = None  # the dataset card written beside the file
    # The settings it was reduced with, the validation leakage check, the score spread:
    # what the card says, for scripts.
    details: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class Rejection(SQLModel, table=True):
    """A row a reduction left out, and why: `distillery results JOB --rejected`."""

    __tablename__ = "rejections"
    __table_args__ = (Index("ix_rejections_file_reason", "training_file_id", "reason"),)

    id: int | None = Field(default=None, primary_key=True)
    training_file_id: int = Field(foreign_key="training_files.id")
    prompt_id: int = Field(foreign_key="prompts.id")
    # no_answer, truncated, refusal, too_short, too_long, degenerate, non_text, duplicate,
    # near_duplicate, low_score, unscored
    reason: str
    duplicate_of: int | None = Field(default=None, foreign_key="prompts.id")  # the kept row
    score: int | None = None  # the judge's, when the job was judged


class JudgeRun(SQLModel, table=True):
    """`distillery judge JOB`: one rubric applied by one tier to a job's answers."""

    __tablename__ = "judge_runs"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    tier: str
    model: str
    rubric: str = Field(sa_column=Column(Text, nullable=False))
    rubric_sha256: str
    total: int = 0  # answers sent to the judge
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class Judgement(SQLModel, table=True):
    """The judge's verdict on one answer: a score 1-10 and a one-line reason, or None
    (unscored) with what went wrong."""

    __tablename__ = "judgements"
    __table_args__ = (UniqueConstraint("judge_run_id", "prompt_id"),)

    id: int | None = Field(default=None, primary_key=True)
    judge_run_id: int = Field(foreign_key="judge_runs.id")
    prompt_id: int = Field(foreign_key="prompts.id")
    score: int | None = None
    reason: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class FineTuneBackend(StrEnum):
    LOCAL = "local"  # PyTorch + PEFT on this machine (workers/training)
    OPENAI = "openai"  # an OpenAI-compatible fine-tuning API (producer/finetune.py)


class FineTuneStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_FINE_TUNE_STATUSES = frozenset(
    {FineTuneStatus.SUCCEEDED, FineTuneStatus.FAILED, FineTuneStatus.CANCELLED}
)


class FineTune(SQLModel, table=True):
    """One training run, local or at a provider: what it trained on (path and sha256, so a
    file edited since is noticed), with what, how far it got and what it produced."""

    __tablename__ = "fine_tunes"

    id: int | None = Field(default=None, primary_key=True)
    backend: FineTuneBackend = _enum(FineTuneBackend)
    base_model: str  # a path (local) or the provider's model name
    training_path: str
    training_sha256: str
    validation_path: str | None = None
    validation_sha256: str | None = None
    training_file_id: int | None = Field(default=None, foreign_key="training_files.id")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )
    status: FineTuneStatus = _enum(FineTuneStatus, default=FineTuneStatus.QUEUED)
    examples: int = 0  # trained on, after the ones dropped
    # Examples left out, by reason ("over_context": longer than max_length tokens).
    dropped: dict[str, int] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )
    provider_job_id: str | None = Field(default=None, index=True)
    # [{"step", "epoch", "train_loss", "validation_loss"}], one entry per logged step.
    loss_curve: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSONType, nullable=False)
    )
    steps_done: int = 0
    steps_total: int = 0
    # {"adapter": dir, "merged": dir, "gguf": file, "checkpoint": dir}: what exists so far.
    artifacts: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    started_at: datetime | None = _time()
    finished_at: datetime | None = _time()
    error: str | None = Field(default=None, sa_column=Column(Text))


# Core table handles, for the bulk statements (executemany INSERT/UPDATE) of the ledger and
# the queries: one place, so every module names a table the same way.
PROMPTS: Table = SQLModel.metadata.tables["prompts"]
ATTEMPTS: Table = SQLModel.metadata.tables["attempts"]
FALLBACKS: Table = SQLModel.metadata.tables["fallbacks"]
JOBS: Table = SQLModel.metadata.tables["jobs"]
TRAINING_FILES: Table = SQLModel.metadata.tables["training_files"]
FINE_TUNES: Table = SQLModel.metadata.tables["fine_tunes"]
BATCHES: Table = SQLModel.metadata.tables["batches"]
RESPONSE_CACHE: Table = SQLModel.metadata.tables["response_cache"]
REJECTIONS: Table = SQLModel.metadata.tables["rejections"]
JUDGEMENTS: Table = SQLModel.metadata.tables["judgements"]
JUDGE_RUNS: Table = SQLModel.metadata.tables["judge_runs"]
