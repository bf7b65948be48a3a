"""Read-only aggregates over one job, for `status`, `report`, the progress bar and
`cost simulate --job`: counts, tier distributions, fallbacks, latency percentiles, usage.

Everything is aggregated in the database, so a job of 100k prompts is summarised without
loading its rows; a percentile fetches a single value (see `_nearest_rank`).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, FromClause, Select, func, join, select
from sqlmodel import Session, col

from models.tables import (
    TERMINAL_PROMPT_STATUSES,
    Attempt,
    AttemptPurpose,
    AttemptStatus,
    Fallback,
    Job,
    Prompt,
    PromptStatus,
)

# Prompts that reached an outcome. Cancelled prompts were stopped, not answered, so they say
# nothing about how often the router's choice had to be escalated.
FINISHED_PROMPT_STATUSES = (PromptStatus.SUCCEEDED, PromptStatus.FAILED)


class TierUsage(NamedTuple):
    """The calls of one (tier, purpose) of a job, and what they used."""

    tier: str
    purpose: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class Tokens:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class PromptUsage:
    """Sums over a job's prompts (each prompt's own sums over its calls)."""

    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class FallbackTally:
    fell_back: int  # prompts that escalated at least once
    finished: int  # prompts that succeeded or failed (FINISHED_PROMPT_STATUSES)

    @property
    def rate(self) -> float | None:
        """The fallback rate of the finished prompts; None before any finished."""
        return self.fell_back / self.finished if self.finished else None


@dataclass(frozen=True)
class Latency:
    """Non-null latencies: how many, nearest-rank percentiles by percent, and the largest."""

    count: int
    percentiles: dict[int, float]
    maximum: float


@dataclass(frozen=True)
class FinalAnswer:
    """A succeeded prompt and the usage of its final answer call."""

    messages: list[dict[str, Any]]
    meta: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int


# --- prompts -------------------------------------------------------------------------------


def prompt_count(*, session: Session, job_id: int) -> int:
    query = select(func.count()).select_from(Prompt).where(col(Prompt.job_id) == job_id)
    return int(session.execute(query).scalar_one())


def fallback_tally(*, session: Session, job_id: int) -> FallbackTally:
    query = select(
        func.count().filter(col(Prompt.fell_back).is_(True)),
        func.count().filter(col(Prompt.status).in_(FINISHED_PROMPT_STATUSES)),
    ).where(col(Prompt.job_id) == job_id)
    fell_back, finished = session.execute(query).one()
    return FallbackTally(int(fell_back), int(finished))


def routed_tier_counts(*, session: Session, job_id: int) -> dict[str, int]:
    """Prompts per tier the router chose (prompts not routed yet are left out)."""
    return _tier_counts(session, job_id, col(Prompt.routed_tier))


def final_tier_counts(*, session: Session, job_id: int, terminal_only: bool) -> dict[str, int]:
    """Prompts per tier that gave the final answer; with `terminal_only`, of finished or
    cancelled prompts only."""
    where = (col(Prompt.status).in_(TERMINAL_PROMPT_STATUSES),) if terminal_only else ()
    return _tier_counts(session, job_id, col(Prompt.final_tier), *where)


def _tier_counts(
    session: Session, job_id: int, column: Any, *where: ColumnElement[bool]
) -> dict[str, int]:
    query = (
        select(column, func.count())
        .where(col(Prompt.job_id) == job_id, column.is_not(None), *where)
        .group_by(column)
    )
    return {str(tier): int(n) for tier, n in session.execute(query)}


def prompt_usage(*, session: Session, job_id: int) -> PromptUsage:
    query = select(
        func.coalesce(func.sum(Prompt.prompt_tokens), 0),
        func.coalesce(func.sum(Prompt.completion_tokens), 0),
        func.coalesce(func.sum(Prompt.cost_usd), 0.0),
    ).where(col(Prompt.job_id) == job_id)
    prompt_tokens, completion_tokens, cost = session.execute(query).one()
    return PromptUsage(int(prompt_tokens), int(completion_tokens), float(cost))


def recent_jobs(*, session: Session, limit: int) -> list[Job]:
    """The newest `limit` jobs, newest first."""
    query = select(Job).order_by(col(Job.id).desc()).limit(limit)
    return list(session.execute(query).scalars())


# --- fallbacks -----------------------------------------------------------------------------


def fallback_reason_counts(*, session: Session, job_id: int) -> dict[str, int]:
    """Escalations of a job per reason, unordered."""
    rows = session.execute(_fallback_groups(job_id, col(Fallback.reason)))
    return {str(reason): int(n) for reason, n in rows}


def fallback_path_counts(*, session: Session, job_id: int) -> dict[tuple[str, str], int]:
    """Escalations of a job per (from tier, to tier), unordered."""
    rows = session.execute(_fallback_groups(job_id, col(Fallback.from_tier), col(Fallback.to_tier)))
    return {(str(source), str(target)): int(n) for source, target, n in rows}


def _fallback_groups(job_id: int, *columns: Any) -> Select[Any]:
    # Unordered: PostgreSQL orders a native enum (the reason) by declaration, not by name,
    # so callers sort the handful of groups themselves.
    return select(*columns, func.count()).where(col(Fallback.job_id) == job_id).group_by(*columns)


# --- latency -------------------------------------------------------------------------------


def answer_latency(
    *, session: Session, job_id: int, tier: str, percentiles: Sequence[int]
) -> Latency | None:
    """The latency of a tier's answer calls for the job, every status (a timeout is latency
    the user waited through too); None when the tier made none."""
    where = (
        col(Prompt.job_id) == job_id,
        col(Attempt.purpose) == AttemptPurpose.ANSWER,
        col(Attempt.tier) == tier,
        col(Attempt.status) != AttemptStatus.CACHED,  # no call, no latency
    )
    return _latency(session, col(Attempt.latency_ms), _attempts_of_job(), where, percentiles)


def router_latency(*, session: Session, job_id: int, percentiles: Sequence[int]) -> Latency | None:
    """The router's decision time per prompt; None when none was recorded."""
    source = join(Prompt, Job, col(Prompt.job_id) == col(Job.id))
    where = (col(Prompt.job_id) == job_id,)
    return _latency(session, col(Prompt.router_latency_ms), source, where, percentiles)


def _attempts_of_job() -> FromClause:
    """Attempts with their prompt, which carries the job id."""
    return join(Attempt, Prompt, col(Attempt.prompt_id) == col(Prompt.id))


def _latency(
    session: Session,
    column: Any,
    source: FromClause,
    where: tuple[ColumnElement[bool], ...],
    percentiles: Sequence[int],
) -> Latency | None:
    where = (*where, column.is_not(None))
    query = select(func.count(column), func.max(column)).select_from(source).where(*where)
    count, maximum = session.execute(query).one()
    if not count:
        return None
    ranks = {
        pct: _nearest_rank(session, column, source, where, int(count), pct) for pct in percentiles
    }
    return Latency(int(count), ranks, float(maximum))


def _nearest_rank(
    session: Session,
    column: Any,
    source: FromClause,
    where: tuple[ColumnElement[bool], ...],
    count: int,
    pct: int,
) -> float:
    """The nearest-rank percentile: the smallest value with at least `pct` % of the values at
    or below it, i.e. the ceil(pct/100 * n)-th smallest (1-based). No interpolation, so it is
    always a latency that was actually measured.

    The database sorts and returns that one value (ORDER BY … OFFSET rank-1 LIMIT 1): the same
    on SQLite and PostgreSQL, and no column of 100k floats crosses the wire."""
    rank = max(1, -(-pct * count // 100))  # integer ceil: no float rounding at exact ranks
    query = select(column).select_from(source).where(*where).order_by(column)
    return float(session.execute(query.offset(rank - 1).limit(1)).scalar_one())


# --- calls ---------------------------------------------------------------------------------


def usage_by_tier(*, session: Session, job_id: int) -> list[TierUsage]:
    """Calls, tokens and cost per (tier, purpose) over all of a job's attempts."""
    tier, purpose = col(Attempt.tier), col(Attempt.purpose)
    query = (
        select(
            tier,
            purpose,
            func.count(),
            func.coalesce(func.sum(Attempt.prompt_tokens), 0),
            func.coalesce(func.sum(Attempt.completion_tokens), 0),
            func.coalesce(func.sum(Attempt.cost_usd), 0.0),
        )
        .select_from(_attempts_of_job())
        .where(col(Prompt.job_id) == job_id, col(Attempt.status) != AttemptStatus.CACHED)
        .group_by(tier, purpose)
    )
    return [
        TierUsage(str(t), str(p), int(n), int(pt), int(ct), float(cost))
        for t, p, n, pt, ct, cost in session.execute(query)
    ]


def attempt_count(*, session: Session, job_id: int) -> int:
    """Every call made for the job's prompts (answers, retries, escalations, routing);
    answers from the response cache were no call (`cache_savings`)."""
    query = (
        select(func.count())
        .select_from(Attempt)
        .join(Prompt, col(Prompt.id) == col(Attempt.prompt_id))
        .where(col(Prompt.job_id) == job_id, col(Attempt.status) != AttemptStatus.CACHED)
    )
    return int(session.execute(query).scalar_one())


def final_answer_tokens(*, session: Session, job_id: int) -> Tokens:
    """Tokens of every succeeded prompt's final answer call, summed (`_final_answer_ids`)."""
    query = select(
        func.coalesce(func.sum(Attempt.prompt_tokens), 0),
        func.coalesce(func.sum(Attempt.completion_tokens), 0),
    ).where(col(Attempt.id).in_(_final_answer_ids(job_id)))
    prompt_tokens, completion_tokens = session.execute(query).one()
    return Tokens(int(prompt_tokens), int(completion_tokens))


def final_answers(*, session: Session, job_id: int) -> list[FinalAnswer]:
    """Every succeeded prompt, in input order, with its final answer call's tokens."""
    query = (
        select(
            col(Prompt.messages),
            col(Prompt.meta),
            col(Attempt.prompt_tokens),
            col(Attempt.completion_tokens),
        )
        .join(Attempt, col(Attempt.prompt_id) == col(Prompt.id))
        .where(col(Attempt.id).in_(_final_answer_ids(job_id)))
        .order_by(col(Prompt.idx))
    )
    return [
        FinalAnswer(messages, meta, int(pt), int(ct))
        for messages, meta, pt, ct in session.execute(query)
    ]


def _final_answer_ids(job_id: int) -> Select[Any]:
    """Each succeeded prompt's final answer: its last successful answer call on its final
    tier. Earlier successful calls (answers escalated for low confidence) are excluded: an
    unrouted, all-frontier run would have made one call per prompt, not the whole chain."""
    return (
        select(func.max(Attempt.id))
        .select_from(_attempts_of_job())
        .where(
            col(Prompt.job_id) == job_id,
            col(Prompt.status) == PromptStatus.SUCCEEDED,
            col(Attempt.purpose) == AttemptPurpose.ANSWER,
            col(Attempt.status) == AttemptStatus.OK,
            # `|| ''` keeps the planner off ix_attempts_tier: without statistics SQLite
            # joined through it (every call of that tier, for each prompt: 1.4 s for 2,000
            # prompts, quadratic), where each prompt's own calls (ix_attempts_prompt_id) are
            # a handful. The same trick as SQLite's documented unary +, portable.
            col(Attempt.tier).concat("") == col(Prompt.final_tier),
        )
        .group_by(col(Attempt.prompt_id))
    )
