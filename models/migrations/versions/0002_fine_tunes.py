"""The fine_tunes table: one row per training run, local or at a provider.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Types spelt out as in 0001 (VARCHAR enums, JSONB on PostgreSQL, UTC timestamps).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def utc_time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "fine_tunes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("backend", sa.String(), nullable=False),
        sa.Column("base_model", sa.String(), nullable=False),
        sa.Column("training_path", sa.String(), nullable=False),
        sa.Column("training_sha256", sa.String(), nullable=False),
        sa.Column("validation_path", sa.String(), nullable=True),
        sa.Column("validation_sha256", sa.String(), nullable=True),
        sa.Column(
            "training_file_id", sa.Integer(), sa.ForeignKey("training_files.id"), nullable=True
        ),
        sa.Column("hyperparameters", JSON_TYPE, nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("dropped", JSON_TYPE, nullable=False),
        sa.Column("provider_job_id", sa.String(), nullable=True),
        sa.Column("loss_curve", JSON_TYPE, nullable=False),
        sa.Column("steps_done", sa.Integer(), nullable=False),
        sa.Column("steps_total", sa.Integer(), nullable=False),
        sa.Column("artifacts", JSON_TYPE, nullable=False),
        sa.Column("created_at", utc_time(), nullable=False),
        sa.Column("started_at", utc_time(), nullable=True),
        sa.Column("finished_at", utc_time(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_fine_tunes_provider_job_id", "fine_tunes", ["provider_job_id"])


def downgrade() -> None:
    op.drop_table("fine_tunes")
