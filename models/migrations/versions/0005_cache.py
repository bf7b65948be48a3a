"""The response cache: the response_cache table, and attempts.cached_from (a `cached`
attempt's pointer to the attempt whose answer it reused).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Types spelt out as in 0001 (JSONB on PostgreSQL, UTC timestamps).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:  # batch: SQLite cannot add a foreign key
        batch.add_column(sa.Column("cached_from", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_attempts_cached_from_attempts", "attempts", ["cached_from"], ["id"]
        )
    op.create_table(
        "response_cache",
        sa.Column("key", sa.String(length=64), primary_key=True),
        sa.Column("attempt_id", sa.Integer(), sa.ForeignKey("attempts.id"), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("logprobs", JSON_TYPE, nullable=True),
        sa.Column("finish_reason", sa.String(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("response_cache")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_constraint("fk_attempts_cached_from_attempts", type_="foreignkey")
        batch.drop_column("cached_from")
