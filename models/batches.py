"""The ledger's side of provider batches: which prompts a batch holds, claiming prompts for a
new batch, and the one transaction that takes a finished batch's results (exactly once).

A prompt's `batch_id` says which batch holds it. Packing claims only prompts that no batch
holds, so nothing is sent twice; committing a batch's results clears the mark of its
prompts that still need an answer, in the same transaction, so they can be claimed again.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from models.tables import (
    ATTEMPTS,
    BATCHES,
    JOBS,
    PROMPTS,
    TERMINAL_PROMPT_STATUSES,
    AttemptStatus,
    BatchStatus,
)
from models.types import utcnow

# Ids per IN list: a batch holds up to 50,000 prompts, more than SQLite's 32,766 variables
# per statement allow (and long IN lists cost PostgreSQL's planner too).
CHUNK = 2000


def chunks(ids: Sequence[int], size: int = CHUNK) -> list[list[int]]:
    return [list(ids[start : start + size]) for start in range(0, len(ids), size)]


def unclaimed_prompts(*, conn: Connection, job_id: int) -> list[int]:
    """A job's prompts with no final answer that no batch holds, in input order."""
    query = (
        select(PROMPTS.c.id)
        .where(
            PROMPTS.c.job_id == job_id,
            PROMPTS.c.status.not_in(TERMINAL_PROMPT_STATUSES),
            PROMPTS.c.batch_id.is_(None),
        )
        .order_by(PROMPTS.c.idx)
    )
    return list(conn.execute(query).scalars())


def claim_batch(
    *, conn: Connection, job_id: int, tier: str, model: str, prompt_ids: Sequence[int]
) -> tuple[int, list[int]]:
    """A new batches row (status preparing) holding those of `prompt_ids` still unclaimed;
    its id and the prompts it got (a racing packer may have taken some)."""
    inserted = conn.execute(
        insert(BATCHES).values(
            job_id=job_id,
            tier=tier,
            model=model,
            status=BatchStatus.PREPARING,
            lines=0,
            provider_completed=0,
            provider_failed=0,
            answered=0,
            errored=0,
            ignored=0,
            cost_usd=0.0,
            polls=0,
            created_at=utcnow(),
        )
    ).inserted_primary_key
    assert inserted is not None
    batch_id = int(inserted[0])
    for chunk in chunks(prompt_ids):
        conn.execute(
            update(PROMPTS)
            .where(
                PROMPTS.c.id.in_(chunk),
                PROMPTS.c.batch_id.is_(None),
                PROMPTS.c.status.not_in(TERMINAL_PROMPT_STATUSES),
            )
            .values(batch_id=batch_id)
        )
    held = held_prompts(conn=conn, batch_id=batch_id)
    if not held:  # a racing packer took them all: no empty row in `status`
        conn.execute(delete(BATCHES).where(BATCHES.c.id == batch_id))
        return batch_id, held
    conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(lines=len(held)))
    return batch_id, held


def held_prompts(*, conn: Connection, batch_id: int) -> list[int]:
    """The open prompts a batch holds, in input order."""
    query = (
        select(PROMPTS.c.id)
        .where(PROMPTS.c.batch_id == batch_id, PROMPTS.c.status.not_in(TERMINAL_PROMPT_STATUSES))
        .order_by(PROMPTS.c.idx)
    )
    return list(conn.execute(query).scalars())


def batch_row(*, conn: Connection, batch_id: int, lock: bool = False) -> Any:
    query = select(BATCHES).where(BATCHES.c.id == batch_id)
    return conn.execute(query.with_for_update() if lock else query).first()


def job_batches(*, conn: Connection, job_id: int) -> list[Any]:
    query = select(BATCHES).where(BATCHES.c.job_id == job_id).order_by(BATCHES.c.id)
    return list(conn.execute(query))


def update_batch(*, conn: Connection, batch_id: int, **values: Any) -> None:
    conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(**values))


def count_poll(*, conn: Connection, batch_id: int, **values: Any) -> None:
    update_batch(conn=conn, batch_id=batch_id, polls=BATCHES.c.polls + 1, **values)


def release_prompts(*, conn: Connection, batch_id: int, prompt_ids: Sequence[int]) -> None:
    """Let `prompt_ids` (still open) be claimed by a later batch."""
    for chunk in chunks(prompt_ids):
        conn.execute(
            update(PROMPTS)
            .where(PROMPTS.c.batch_id == batch_id, PROMPTS.c.id.in_(chunk))
            .values(batch_id=None)
        )


def failed_batch_tries(*, conn: Connection, prompt_ids: Sequence[int]) -> dict[int, int]:
    """How many batch lines of each prompt did not come back answered (errors, expiries)."""
    tries: dict[int, int] = {}
    for chunk in chunks(prompt_ids):
        query = (
            select(ATTEMPTS.c.prompt_id, func.count())
            .where(
                ATTEMPTS.c.prompt_id.in_(chunk),
                ATTEMPTS.c.batch_id.is_not(None),
                ATTEMPTS.c.status != AttemptStatus.OK,
            )
            .group_by(ATTEMPTS.c.prompt_id)
        )
        tries.update({int(pid): int(n) for pid, n in conn.execute(query)})
    return tries


def job_params(*, conn: Connection, job_id: int) -> tuple[str, str, dict[str, Any]] | None:
    """(mode, status, params) of a job, or None."""
    row = conn.execute(
        select(JOBS.c.mode, JOBS.c.status, JOBS.c.params).where(JOBS.c.id == job_id)
    ).first()
    return None if row is None else (row.mode, row.status, dict(row.params))


@dataclass(frozen=True, slots=True)
class PathUsage:
    """A job's answers on one tier by one path (batch or online)."""

    batched: bool
    tier: str
    answers: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def answer_paths(*, conn: Connection, job_id: int) -> list[PathUsage]:
    """A job's answered calls, batch and online apart, per tier: counts, tokens and cost."""
    batched = ATTEMPTS.c.batch_id.is_not(None).label("batched")
    query = (
        select(
            batched,
            ATTEMPTS.c.tier,
            func.count(),
            func.coalesce(func.sum(ATTEMPTS.c.prompt_tokens), 0),
            func.coalesce(func.sum(ATTEMPTS.c.completion_tokens), 0),
            func.coalesce(func.sum(ATTEMPTS.c.cost_usd), 0.0),
        )
        .join(PROMPTS, PROMPTS.c.id == ATTEMPTS.c.prompt_id)
        .where(PROMPTS.c.job_id == job_id, ATTEMPTS.c.status == AttemptStatus.OK)
        .group_by(batched, ATTEMPTS.c.tier)
    )
    return [
        PathUsage(bool(b), tier, int(n), int(p), int(c), float(cost))
        for b, tier, n, p, c, cost in conn.execute(query)
    ]
