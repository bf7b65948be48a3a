"""SQL tables and the helpers that read and write them (SQLite or PostgreSQL, via SQLModel)."""

from models.db import create_tables, get_engine, get_write_engine, session_scope
from models.tables import (
    TERMINAL_PROMPT_STATUSES,
    Attempt,
    AttemptPurpose,
    AttemptStatus,
    CachedResponse,
    Fallback,
    FallbackReason,
    FineTune,
    FineTuneBackend,
    FineTuneStatus,
    Job,
    JobMode,
    JobStatus,
    Prompt,
    PromptStatus,
    TrainingFile,
)

__all__ = [
    "TERMINAL_PROMPT_STATUSES",
    "Attempt",
    "AttemptPurpose",
    "AttemptStatus",
    "CachedResponse",
    "Fallback",
    "FallbackReason",
    "FineTune",
    "FineTuneBackend",
    "FineTuneStatus",
    "Job",
    "JobMode",
    "JobStatus",
    "Prompt",
    "PromptStatus",
    "TrainingFile",
    "create_tables",
    "get_engine",
    "get_write_engine",
    "session_scope",
]
