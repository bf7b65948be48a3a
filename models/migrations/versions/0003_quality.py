"""Training data quality (issue 17): finish_reason on attempts and prompts, the reducer's
rejections, judge runs and their judgements, and a training file's format, card and details.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

Types spelt out as in 0001 (VARCHAR enums, JSONB on PostgreSQL, UTC timestamps).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def utc_time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("attempts", sa.Column("finish_reason", sa.String(), nullable=True))
    op.add_column("prompts", sa.Column("finish_reason", sa.String(), nullable=True))
    # Existing rows get the values a new row gets from the model's defaults.
    with op.batch_alter_table("training_files") as batch:
        batch.add_column(sa.Column("format", sa.String(), nullable=False, server_default="openai"))
        batch.add_column(sa.Column("card_path", sa.String(), nullable=True))
        batch.add_column(
            sa.Column("details", JSON_TYPE, nullable=False, server_default=sa.text("'{}'"))
        )
    with op.batch_alter_table("training_files") as batch:
        batch.alter_column("format", server_default=None)
        batch.alter_column("details", server_default=None)
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "training_file_id", sa.Integer(), sa.ForeignKey("training_files.id"), nullable=False
        ),
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompts.id"), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("duplicate_of", sa.Integer(), sa.ForeignKey("prompts.id"), nullable=True),
        sa.Column("score", sa.Integer(), nullable=True),
    )
    op.create_index("ix_rejections_file_reason", "rejections", ["training_file_id", "reason"])
    op.create_table(
        "judge_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("rubric", sa.Text(), nullable=False),
        sa.Column("rubric_sha256", sa.String(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", utc_time(), nullable=False),
    )
    op.create_index("ix_judge_runs_job_id", "judge_runs", ["job_id"])
    op.create_table(
        "judgements",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("judge_run_id", sa.Integer(), sa.ForeignKey("judge_runs.id"), nullable=False),
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompts.id"), nullable=False),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", utc_time(), nullable=False),
        sa.UniqueConstraint("judge_run_id", "prompt_id"),
    )


def downgrade() -> None:
    op.drop_table("judgements")
    op.drop_table("judge_runs")
    op.drop_table("rejections")
    with op.batch_alter_table("training_files") as batch:
        batch.drop_column("details")
        batch.drop_column("card_path")
        batch.drop_column("format")
    with op.batch_alter_table("prompts") as batch:
        batch.drop_column("finish_reason")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("finish_reason")
