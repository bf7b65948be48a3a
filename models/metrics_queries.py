"""Fleet-wide aggregates over the whole ledger, for the Prometheus exporter's scrape: one
GROUP BY per table, over a Core connection, and no row loaded into Python."""

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, case, func, select
from sqlmodel import col

from models.tables import Attempt, Fallback, Job, Prompt


@dataclass(frozen=True)
class AttemptGroup:
    """The calls of one (tier, status, purpose): sums, and cumulative latency buckets."""

    tier: str
    status: str
    purpose: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float  # summed
    buckets: tuple[int, ...]  # calls with latency at or below each bound, in bound order


@dataclass(frozen=True)
class FallbackGroup:
    from_tier: str
    to_tier: str
    reason: str
    count: int


@dataclass(frozen=True)
class PromptGroup:
    job_status: str
    mode: str
    status: str
    count: int


@dataclass(frozen=True)
class JobGroup:
    mode: str
    status: str
    count: int


def attempt_groups(*, conn: Connection, bounds_ms: Sequence[int]) -> list[AttemptGroup]:
    """One scan of `attempts`: counts, tokens, cost and latency buckets (upper bounds in
    milliseconds, as the ledger stores latency) per (tier, status, purpose)."""
    latency = col(Attempt.latency_ms)
    buckets = [
        func.sum(case((latency <= bound, 1), else_=0)).label(f"le_{bound}") for bound in bounds_ms
    ]
    keys = (col(Attempt.tier), col(Attempt.status), col(Attempt.purpose))
    query = select(
        *keys,
        func.count().label("calls"),
        func.coalesce(func.sum(Attempt.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(Attempt.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(Attempt.cost_usd), 0.0).label("cost_usd"),
        func.coalesce(func.sum(latency), 0.0).label("latency_ms"),
        *buckets,
    ).group_by(*keys)
    return [
        AttemptGroup(
            tier=row.tier,
            status=row.status,
            purpose=row.purpose,
            calls=row.calls,
            prompt_tokens=int(row.prompt_tokens),
            completion_tokens=int(row.completion_tokens),
            cost_usd=float(row.cost_usd),
            latency_ms=float(row.latency_ms),
            buckets=tuple(int(getattr(row, f"le_{bound}") or 0) for bound in bounds_ms),
        )
        for row in conn.execute(query)
    ]


def fallback_groups(*, conn: Connection) -> list[FallbackGroup]:
    """Escalations per (from tier, to tier, reason), over every job."""
    keys = (col(Fallback.from_tier), col(Fallback.to_tier), col(Fallback.reason))
    rows = conn.execute(select(*keys, func.count().label("n")).group_by(*keys))
    return [FallbackGroup(row.from_tier, row.to_tier, row.reason, row.n) for row in rows]


def prompt_groups(*, conn: Connection) -> list[PromptGroup]:
    """Prompts per (their job's status, their job's mode, their own status)."""
    keys = (col(Job.status), col(Job.mode), col(Prompt.status))
    query = (
        select(*keys, func.count().label("n"))
        .select_from(Prompt)
        .join(Job, col(Job.id) == col(Prompt.job_id))
        .group_by(*keys)
    )
    return [PromptGroup(*row) for row in conn.execute(query)]


def job_groups(*, conn: Connection) -> list[JobGroup]:
    """Jobs per (mode, status)."""
    keys = (col(Job.mode), col(Job.status))
    return [JobGroup(*row) for row in conn.execute(select(*keys, func.count()).group_by(*keys))]
