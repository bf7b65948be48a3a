"""What the response cache saved a job, and what its budget stopped: the queries behind the
cache and budget lines of `status`, `report` and `cost simulate`."""

from dataclasses import dataclass

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import aliased

from models.tables import ATTEMPTS, PROMPTS, AttemptStatus, PromptStatus

# How a prompt the budget stopped says so (its `error`): "budget: the job's cap of $5 ...".
BUDGET_PREFIX = "budget:"


@dataclass(frozen=True, slots=True)
class CacheSavings:
    hits: int  # answers given by the cache (attempts with status cached)
    saved_usd: float  # what the calls they replaced cost when they were made


def cache_savings(*, conn: Connection, job_id: int) -> CacheSavings:
    """One join: each cached attempt of the job to the attempt it reused."""
    original = aliased(ATTEMPTS)
    query = (
        select(func.count(), func.coalesce(func.sum(original.c.cost_usd), 0.0))
        .select_from(ATTEMPTS)
        .join(PROMPTS, PROMPTS.c.id == ATTEMPTS.c.prompt_id)
        .join(original, original.c.id == ATTEMPTS.c.cached_from)
        .where(PROMPTS.c.job_id == job_id, ATTEMPTS.c.status == AttemptStatus.CACHED)
    )
    hits, saved = conn.execute(query).one()
    return CacheSavings(int(hits), float(saved))


def budget_cancelled(*, conn: Connection, job_id: int) -> int:
    """The job's prompts its budget stopped (cancelled, reason budget)."""
    query = select(func.count()).where(
        PROMPTS.c.job_id == job_id,
        PROMPTS.c.status == PromptStatus.CANCELLED,
        PROMPTS.c.error.startswith(BUDGET_PREFIX),
    )
    return int(conn.execute(query).scalar_one())
