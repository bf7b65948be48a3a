"""The five tables: jobs, prompts, attempts, fallbacks, training_files.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Types are spelt out here rather than imported from models.types, so this revision means the
same thing whatever models/ becomes later:

* str enums (status, mode, purpose, reason) are plain VARCHAR holding the enum's value, not
  native PostgreSQL enums: a new status is then a code change, not an ALTER TYPE;
* JSON columns are JSONB on PostgreSQL (indexable, queryable) and JSON elsewhere;
* times are TIMESTAMP WITH TIME ZONE, always written in UTC.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def utc_time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    create_jobs()
    create_prompts()
    create_attempts()
    create_fallbacks()
    create_training_files()


def downgrade() -> None:
    for table in ("training_files", "fallbacks", "attempts", "prompts", "jobs"):
        op.drop_table(table)


def create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("mode", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("router", sa.String(), nullable=True),
        sa.Column("params", JSON_TYPE, nullable=False),
        sa.Column("source", sa.String(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Integer(), nullable=False),
        sa.Column("fell_back", sa.Integer(), nullable=False),
        sa.Column("created_at", utc_time(), nullable=False),
        sa.Column("finished_at", utc_time(), nullable=True),
    )


def create_prompts() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(), nullable=True),
        sa.Column("messages", JSON_TYPE, nullable=False),
        sa.Column("metadata", JSON_TYPE, nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("routed_tier", sa.String(), nullable=True),
        sa.Column("router_score", sa.Float(), nullable=True),
        sa.Column("router_latency_ms", sa.Float(), nullable=True),
        sa.Column("final_tier", sa.String(), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("fell_back", sa.Boolean(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finished_at", utc_time(), nullable=True),
        sa.UniqueConstraint("job_id", "idx"),
    )
    op.create_index("ix_prompts_job_status", "prompts", ["job_id", "status"])
    op.create_index("ix_prompts_job_final_tier", "prompts", ["job_id", "final_tier"])


def create_attempts() -> None:
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompts.id"), nullable=False),
        sa.Column("purpose", sa.String(), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", utc_time(), nullable=False),
    )
    op.create_index("ix_attempts_prompt_id", "attempts", ["prompt_id"])
    op.create_index("ix_attempts_started_at", "attempts", ["started_at"])
    op.create_index("ix_attempts_tier", "attempts", ["tier"])


def create_fallbacks() -> None:
    op.create_table(
        "fallbacks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompts.id"), nullable=False),
        sa.Column("from_tier", sa.String(), nullable=False),
        sa.Column("to_tier", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("created_at", utc_time(), nullable=False),
    )
    op.create_index("ix_fallbacks_job_id", "fallbacks", ["job_id"])
    op.create_index("ix_fallbacks_prompt_id", "fallbacks", ["prompt_id"])


def create_training_files() -> None:
    op.create_table(
        "training_files",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("validation_path", sa.String(), nullable=True),
        sa.Column("validation_examples", sa.Integer(), nullable=False),
        sa.Column("rejected", JSON_TYPE, nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("fine_tune_job_id", sa.String(), nullable=True),
        sa.Column("created_at", utc_time(), nullable=False),
    )
    op.create_index("ix_training_files_job_id", "training_files", ["job_id"])
