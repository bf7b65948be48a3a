"""The live gateway's SQL (producer.gateway): its jobs, and one prompt row per request.

A live job is an ordinary job row with mode `live` that grows a prompt per request (its
`total` counts them) and is never finished by the ledger; `status`, `results` and `report`
read it like any other job."""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, text, update

from models.tables import JOBS, PROMPTS, JobMode, JobStatus, PromptStatus
from models.types import utcnow

# PostgreSQL advisory lock taken while a live job is looked up or created, so gateway
# processes starting a new day together create one job, not one each (SQLite's write
# transaction, BEGIN IMMEDIATE on the write engine, does the same there).
LIVE_JOB_LOCK_KEY = 0x6C697665  # "live"


class NotALiveJob(ValueError):
    """The job a request named exists, but is not a live job."""


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request needs to know before its first call, and to name in its headers."""

    prompt_id: int
    idx: int


def live_job_id(*, conn: Connection, name: str, params: dict[str, Any], router: str) -> int:
    """The id of the live job called `name`, created (with `params`, the gateway's frozen
    settings) if there is none, in the caller's write transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LIVE_JOB_LOCK_KEY})
    found = conn.execute(
        select(JOBS.c.id, JOBS.c.mode).where(JOBS.c.name == name).order_by(JOBS.c.id.desc())
    ).first()
    if found is not None:
        if found.mode != JobMode.LIVE:
            raise NotALiveJob(f"job {name!r} (id {found.id}) is a {found.mode} job, not a live job")
        return int(found.id)
    row = {
        "name": name,
        "mode": JobMode.LIVE,
        "status": JobStatus.RUNNING,
        "router": router,
        "params": params,
        "source": "gateway",
        "total": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "fell_back": 0,
        "created_at": utcnow(),
    }
    return int(conn.execute(insert(JOBS).values(row).returning(JOBS.c.id)).scalar_one())


def admit_prompt(
    *,
    conn: Connection,
    job_id: int,
    messages: list[dict[str, Any]],
    routed_tier: str,
    router_score: float | None,
    router_latency_ms: float | None,
    meta: dict[str, Any] | None = None,
) -> Admission:
    """A request's prompt row, pending, with its route decision; its job counts it. One
    short write transaction (the job's row is locked while `total` moves on, which also
    makes `idx` unique without a retry)."""
    total = conn.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id)
        .values(total=JOBS.c.total + 1)
        .returning(JOBS.c.total)
    ).scalar_one()
    idx = int(total) - 1
    prompt_id = conn.execute(
        insert(PROMPTS)
        .values(
            {
                "job_id": job_id,
                "idx": idx,
                "messages": messages,
                "metadata": meta,  # the column's name (the ORM calls it `meta`)
                "status": PromptStatus.PENDING,
                "routed_tier": routed_tier,
                "router_score": router_score,
                "router_latency_ms": router_latency_ms,
            }
        )
        .returning(PROMPTS.c.id)
    ).scalar_one()
    return Admission(int(prompt_id), idx)
