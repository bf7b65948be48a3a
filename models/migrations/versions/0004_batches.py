"""The batches table (one row per provider batch), and which batch holds each prompt and
answered each attempt.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

Types spelt out as in 0001 (VARCHAR enums, JSONB on PostgreSQL, UTC timestamps).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def utc_time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("provider_batch_id", sa.String(), nullable=True),
        sa.Column("input_file_id", sa.String(), nullable=True),
        sa.Column("output_file_id", sa.String(), nullable=True),
        sa.Column("error_file_id", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("provider_completed", sa.Integer(), nullable=False),
        sa.Column("provider_failed", sa.Integer(), nullable=False),
        sa.Column("answered", sa.Integer(), nullable=False),
        sa.Column("errored", sa.Integer(), nullable=False),
        sa.Column("ignored", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("errors", JSON_TYPE, nullable=True),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("created_at", utc_time(), nullable=False),
        sa.Column("submitted_at", utc_time(), nullable=True),
        sa.Column("finished_at", utc_time(), nullable=True),
        sa.Column("ingested_at", utc_time(), nullable=True),
    )
    op.create_index("ix_batches_job_id", "batches", ["job_id"])
    op.create_index("ix_batches_provider_batch_id", "batches", ["provider_batch_id"])
    # batch mode: SQLite cannot ALTER a table to add a foreign key (alembic copies it)
    for table in ("prompts", "attempts"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("batch_id", sa.Integer(), nullable=True))
            batch.create_foreign_key(f"fk_{table}_batch_id", "batches", ["batch_id"], ["id"])
            batch.create_index(f"ix_{table}_batch_id", ["batch_id"])


def downgrade() -> None:
    for table in ("attempts", "prompts"):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_batch_id")
            batch.drop_constraint(f"fk_{table}_batch_id", type_="foreignkey")
            batch.drop_column("batch_id")
    op.drop_table("batches")
