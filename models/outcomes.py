"""Recording many prompts' outcomes in one transaction (the workers' group commit).

Each `Record` is what one step of one prompt writes: the calls it made (attempt rows) and
then either an escalation (a fallback row) or the prompt's final outcome. `write_records`
writes a group of them with a handful of statements, whatever the group's size: one
INSERT per table, one SELECT that locks the prompts still open, one UPDATE for all of
them, and one counter UPDATE per job. A prompt becomes terminal, and is counted on its
job, exactly once, whatever redelivered message or racing cancel writes about it too.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from models.response_cache import store_responses
from models.tables import (
    ATTEMPTS,
    FALLBACKS,
    JOBS,
    OPEN_ENDED_MODES,
    PROMPTS,
    TERMINAL_PROMPT_STATUSES,
    JobStatus,
    PromptStatus,
)
from models.types import utcnow

# What a final outcome sets on its prompt (every one, so one executemany UPDATE fits all).
OUTCOME_FIELDS = ("final_tier", "response", "confidence", "error", "finish_reason")
TOTAL_FIELDS = ("prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "fell_back")
_COUNTERS = {
    PromptStatus.SUCCEEDED: "completed",
    PromptStatus.FAILED: "failed",
    PromptStatus.CANCELLED: "cancelled",  # e.g. its job's budget was spent (reason "budget")
}


@dataclass(slots=True)
class Record:
    """One step of one prompt: what it writes, and (once written) what it changed. The
    step's caller reads the result off the same object: `escalate_to` a next tier, or
    `job_finished` (start the job's follow-up work, such as the reducer)."""

    job_id: int
    prompt_id: int
    attempts: list[dict[str, Any]] = field(default_factory=list)
    fallback: dict[str, Any] | None = None
    # The final outcome: `status` (succeeded, failed or cancelled) and any of OUTCOME_FIELDS.
    finish: dict[str, Any] | None = None
    # The answer of the record's last attempt, for the response cache: a response_cache row
    # without its `attempt_id`, which the insert fills in.
    cache: dict[str, Any] | None = None
    # Set by `write_records`:
    finished: bool = False  # this record made its prompt terminal
    job_finished: bool = False  # ... and that finished its job (one record per job says so)

    @property
    def escalate_to(self) -> str | None:
        return self.fallback["to_tier"] if self.fallback else None


def write_records(conn: Connection, records: Sequence[Record]) -> Sequence[Record]:
    """Write `records` in the caller's transaction, and mark on each what it changed (the
    marks count only once the transaction commits)."""
    for record in records:  # a group that failed and is written again starts unmarked
        record.finished = record.job_finished = False
    _insert_attempts(conn, records)
    fallbacks = [record.fallback for record in records if record.fallback]
    if fallbacks:
        conn.execute(insert(FALLBACKS), fallbacks)
    finishing = [record for record in records if record.finish]
    if not finishing:
        return records
    applied = _finish_prompts(conn, finishing)
    finished_jobs = _count_on_jobs(conn, applied)
    for record, _ in applied:
        record.finished = True
        # One record per finished job carries the news, so its follow-up runs once.
        if record.job_id in finished_jobs:
            record.job_finished = True
            finished_jobs.discard(record.job_id)
    return records


def _insert_attempts(conn: Connection, records: Sequence[Record]) -> None:
    """One INSERT for every attempt of the group; when some answers go to the response
    cache, the INSERT returns the new ids (in parameter order), so each cache row points
    at its attempt."""
    attempts = [row for record in records for row in record.attempts]
    if not attempts:
        return
    if not any(record.cache and record.attempts for record in records):
        conn.execute(insert(ATTEMPTS), attempts)
        return
    returning = insert(ATTEMPTS).returning(ATTEMPTS.c.id, sort_by_parameter_order=True)
    ids = iter(conn.execute(returning, attempts).scalars())
    cache_rows = []
    for record in records:
        last = None
        for _ in record.attempts:
            last = next(ids)
        if record.cache and last is not None:
            cache_rows.append({**record.cache, "attempt_id": last})
    store_responses(conn=conn, rows=cache_rows)


def _finish_prompts(conn: Connection, records: list[Record]) -> list[tuple[Record, bool]]:
    """Make each record's prompt terminal unless it already is; the records that did, each
    with whether its prompt fell back on the way."""
    ids = {record.prompt_id for record in records}
    # FOR UPDATE (PostgreSQL): a racing cancel or duplicate waits for this commit, then sees
    # the new status. SQLite's writer holds the whole database already (BEGIN IMMEDIATE).
    still_open = set(
        conn.execute(
            select(PROMPTS.c.id)
            .where(PROMPTS.c.id.in_(ids), PROMPTS.c.status.not_in(TERMINAL_PROMPT_STATUSES))
            .with_for_update()
        ).scalars()
    )
    applied: dict[int, Record] = {}
    for record in records:  # two outcomes for one prompt in a group: the first one wins
        if record.prompt_id in still_open and record.prompt_id not in applied:
            applied[record.prompt_id] = record
    if applied:
        totals = _totals(conn, list(applied))
        now = utcnow()
        rows = [_outcome_row(record, totals[pid], now) for pid, record in applied.items()]
        conn.execute(_UPDATE_OUTCOME, rows)
        return [(record, totals[pid]["fell_back"]) for pid, record in applied.items()]
    return []


def _totals(conn: Connection, prompt_ids: list[int]) -> dict[int, dict[str, Any]]:
    """A prompt's tokens, cost and latency are the sums over all its attempts (route calls
    and escalations included), so the prompt row always adds up to its attempts."""
    totals = {
        pid: {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
            "latency_ms": 0.0,
            "fell_back": False,
        }
        for pid in prompt_ids
    }
    sums = (
        select(
            ATTEMPTS.c.prompt_id,
            func.sum(ATTEMPTS.c.prompt_tokens),
            func.sum(ATTEMPTS.c.completion_tokens),
            func.sum(ATTEMPTS.c.cost_usd),
            func.sum(ATTEMPTS.c.latency_ms),
        )
        .where(ATTEMPTS.c.prompt_id.in_(prompt_ids))
        .group_by(ATTEMPTS.c.prompt_id)
    )
    for pid, prompt_tokens, completion_tokens, cost, latency in conn.execute(sums):
        totals[pid].update(
            prompt_tokens=int(prompt_tokens or 0),
            completion_tokens=int(completion_tokens or 0),
            cost_usd=float(cost or 0.0),
            latency_ms=float(latency or 0.0),
        )
    fell_back = select(FALLBACKS.c.prompt_id).where(FALLBACKS.c.prompt_id.in_(prompt_ids))
    for pid in conn.execute(fell_back.distinct()).scalars():
        totals[pid]["fell_back"] = True
    return totals


# Bound names carry a prefix: SQLAlchemy reserves the columns' own names in SET clauses.
_UPDATE_OUTCOME = (
    update(PROMPTS)
    .where(PROMPTS.c.id == bindparam("b_id"))
    .values(
        {
            name: bindparam(f"b_{name}")
            for name in ("status", "finished_at", *OUTCOME_FIELDS, *TOTAL_FIELDS)
        }
    )
)


def _outcome_row(record: Record, totals: dict[str, Any], now: Any) -> dict[str, Any]:
    finish = record.finish or {}
    row = {"b_id": record.prompt_id, "b_status": finish["status"], "b_finished_at": now}
    row.update({f"b_{name}": finish.get(name) for name in OUTCOME_FIELDS})
    row.update({f"b_{name}": value for name, value in totals.items()})
    return row


def _count_on_jobs(conn: Connection, applied: list[tuple[Record, bool]]) -> set[int]:
    """Add the newly terminal prompts to their jobs' counters; the jobs this finished."""
    counts: dict[int, Counter[str]] = {}
    for record, fell_back in applied:
        counter = counts.setdefault(record.job_id, Counter())
        counter[_COUNTERS[PromptStatus((record.finish or {})["status"])]] += 1
        counter["fell_back"] += fell_back
    finished = set()
    for job_id, counter in counts.items():
        values = {name: JOBS.c[name] + n for name, n in counter.items() if n}
        conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(values))
        if finish_job_if_done(conn, job_id):
            finished.add(job_id)
    return finished


def finish_job_if_done(conn: Connection, job_id: int) -> bool:
    """Mark a running job finished once every prompt is terminal; True only for the caller
    that made the change (so the reducer is started once). A live job is never finished
    here (nor a shadow job): all its prompts are terminal between any two requests."""
    done = JOBS.c.completed + JOBS.c.failed + JOBS.c.cancelled
    result = conn.execute(
        update(JOBS)
        .where(
            JOBS.c.id == job_id,
            JOBS.c.status == JobStatus.RUNNING,
            JOBS.c.mode.not_in(OPEN_ENDED_MODES),
            done >= JOBS.c.total,
        )
        .values(status=JobStatus.FINISHED, finished_at=utcnow())
    )
    return result.rowcount == 1
