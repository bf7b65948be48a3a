"""What a worker reads and writes around its calls, apart from the group commit of outcomes
(`models.outcomes`): a message's open prompts with their job's settings, whether a job still
wants calls, and the route step's decisions."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from models.tables import (
    ATTEMPTS,
    FALLBACKS,
    JOBS,
    PROMPTS,
    TERMINAL_PROMPT_STATUSES,
    TRAINING_FILES,
    AttemptPurpose,
    JobMode,
    JobStatus,
)


@dataclass(frozen=True, slots=True)
class OpenPrompt:
    id: int
    job_id: int
    mode: JobMode
    params: dict[str, Any]  # the job's frozen settings, as stored
    messages: list[dict[str, Any]]
    routed_tier: str | None


@dataclass(frozen=True, slots=True)
class RouteDecisionRow:
    prompt_id: int
    tier: str
    score: float | None
    latency_ms: float


def open_prompts(
    *, conn: Connection, prompt_ids: Sequence[int], escalated_from: str | None = None
) -> list[OpenPrompt]:
    """The prompts of a message that still have work to do — not terminal, their job still
    running, and (with `escalated_from`) not already escalated past that tier — in message
    order. This check is what makes a redelivered message harmless. Three queries for the
    whole message: a worker's first step for each of its tasks."""
    rows = conn.execute(
        select(PROMPTS.c.id, PROMPTS.c.job_id, PROMPTS.c.messages, PROMPTS.c.routed_tier).where(
            PROMPTS.c.id.in_(prompt_ids), PROMPTS.c.status.not_in(TERMINAL_PROMPT_STATUSES)
        )
    ).all()
    running = select(JOBS.c.id, JOBS.c.mode, JOBS.c.params).where(
        JOBS.c.id.in_({row.job_id for row in rows}), JOBS.c.status == JobStatus.RUNNING
    )
    jobs = {job.id: job for job in conn.execute(running)}
    skip = _escalated(conn, prompt_ids, escalated_from) if escalated_from else set()
    by_id = {row.id: row for row in rows if row.job_id in jobs and row.id not in skip}
    return [_open(by_id[pid], jobs[by_id[pid].job_id]) for pid in prompt_ids if pid in by_id]


def _open(row: Any, job: Any) -> OpenPrompt:
    return OpenPrompt(
        row.id, row.job_id, job.mode, dict(job.params), list(row.messages), row.routed_tier
    )


def _escalated(conn: Connection, prompt_ids: Sequence[int], tier: str) -> set[int]:
    found = conn.execute(
        select(FALLBACKS.c.prompt_id).where(
            FALLBACKS.c.prompt_id.in_(prompt_ids), FALLBACKS.c.from_tier == tier
        )
    )
    return set(found.scalars())


@dataclass(frozen=True, slots=True)
class OpenWork:
    """What the ledger says is left to do: the prompts of running jobs without a final
    answer, by job, and the finished teacher jobs without a training file."""

    prompts: dict[int, set[int]]
    unreduced: set[int]


def open_work(*, conn: Connection) -> OpenWork:
    """Two indexed queries (prompts by job and status; jobs by status): the sweeper's look
    at the ledger (workers.sweeper). A live job's open prompt is a request in flight in a
    gateway (or one that died with it, whose caller got an error): never re-sent."""
    jobs = conn.execute(
        select(JOBS.c.id, JOBS.c.params).where(
            JOBS.c.status == JobStatus.RUNNING, JOBS.c.mode != JobMode.LIVE
        )
    )
    # A batch job's prompts wait at the provider, held by no message: its batches are
    # polled from countdown tasks, and `distillery resume` restarts them (workers.batches).
    running = [job.id for job in jobs if (job.params or {}).get("via") != "batch"]
    rows = conn.execute(
        select(PROMPTS.c.job_id, PROMPTS.c.id).where(
            PROMPTS.c.job_id.in_(running), PROMPTS.c.status.not_in(TERMINAL_PROMPT_STATUSES)
        )
    )
    prompts: dict[int, set[int]] = {}
    for job_id, prompt_id in rows:
        prompts.setdefault(job_id, set()).add(prompt_id)
    unreduced = conn.execute(
        select(JOBS.c.id).where(
            JOBS.c.mode == JobMode.TEACHER,
            JOBS.c.status == JobStatus.FINISHED,
            JOBS.c.id.not_in(select(TRAINING_FILES.c.job_id)),
        )
    )
    return OpenWork(prompts, set(unreduced.scalars()))


def job_is_running(*, conn: Connection, job_id: int) -> bool:
    status = conn.execute(select(JOBS.c.status).where(JOBS.c.id == job_id)).scalar()
    return status == JobStatus.RUNNING


_RECORD_DECISION = (
    update(PROMPTS)
    .where(PROMPTS.c.id == bindparam("b_id"))
    .values(
        routed_tier=bindparam("b_tier"),
        router_score=bindparam("b_score"),
        router_latency_ms=bindparam("b_latency"),
    )
)


def record_route_decisions(
    *, conn: Connection, decisions: Sequence[RouteDecisionRow], attempts: Sequence[dict[str, Any]]
) -> None:
    """The routed tier of each prompt, and the router's own model calls (attempt rows with
    purpose `route`), in the caller's transaction."""
    if attempts:
        conn.execute(insert(ATTEMPTS), list(attempts))
    if decisions:
        conn.execute(
            _RECORD_DECISION,
            [
                {
                    "b_id": d.prompt_id,
                    "b_tier": d.tier,
                    "b_score": d.score,
                    "b_latency": d.latency_ms,
                }
                for d in decisions
            ],
        )


def answer_spend(*, conn: Connection, job_id: int) -> dict[str, float]:
    """What a job's committed answer calls cost, in all ("all") and per tier ("tier:NAME"):
    the ledger's side of its budget (workers/budget.py), read when Redis has none."""
    rows = conn.execute(
        select(ATTEMPTS.c.tier, func.sum(ATTEMPTS.c.cost_usd))
        .join(PROMPTS, PROMPTS.c.id == ATTEMPTS.c.prompt_id)
        .where(PROMPTS.c.job_id == job_id, ATTEMPTS.c.purpose == AttemptPurpose.ANSWER)
        .group_by(ATTEMPTS.c.tier)
    )
    spend = {f"tier:{tier}": float(cost or 0.0) for tier, cost in rows}
    spend["all"] = sum(spend.values())
    return spend
