"""The live gateway's SQL (producer.gateway): its jobs, and one prompt row per request.

A live job is an ordinary job row with mode `live` that grows a prompt per request (its
`total` counts them) and is never finished by the ledger; `status`, `results` and `report`
read it like any other job."""

from collections import defaultdict
from collections.abc import Sequence
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


def live_job_id(
    *,
    conn: Connection,
    name: str,
    params: dict[str, Any],
    router: str | None,
    mode: JobMode = JobMode.LIVE,
) -> int:
    """The id of the live (or shadow) job called `name`, created (with `params`, the
    gateway's frozen settings) if there is none, in the caller's write transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LIVE_JOB_LOCK_KEY})
    found = conn.execute(
        select(JOBS.c.id, JOBS.c.mode).where(JOBS.c.name == name).order_by(JOBS.c.id.desc())
    ).first()
    if found is not None:
        if found.mode != mode:
            raise NotALiveJob(
                f"job {name!r} (id {found.id}) is a {found.mode} job, not a {mode} job"
            )
        return int(found.id)
    row = {
        "name": name,
        "mode": mode,
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


@dataclass(frozen=True, slots=True)
class AdmitRow:
    """A request's prompt row to insert: pending, with its route decision."""

    job_id: int
    messages: list[dict[str, Any]]
    routed_tier: str
    router_score: float | None
    router_latency_ms: float | None
    meta: dict[str, Any] | None = None


def admit_prompts(*, conn: Connection, rows: Sequence[AdmitRow]) -> list[Admission]:
    """The requests' prompt rows, in the caller's transaction (the ledger writer's group
    commit), in `rows` order: each job's `total` moves on once for the group (its row
    locked, so `idx` is unique without a retry), then one INSERT for all of them."""
    if not rows:
        return []
    by_job: dict[int, list[int]] = defaultdict(list)
    for n, row in enumerate(rows):
        by_job[row.job_id].append(n)
    idx: dict[int, int] = {}
    for job_id, positions in by_job.items():
        total = conn.execute(
            update(JOBS)
            .where(JOBS.c.id == job_id)
            .values(total=JOBS.c.total + len(positions))
            .returning(JOBS.c.total)
        ).scalar_one()
        for k, position in enumerate(positions):
            idx[position] = int(total) - len(positions) + k
    values = [_prompt_values(row, idx[n]) for n, row in enumerate(rows)]
    # An executemany of one cached statement (SQLAlchemy batches it into multi-row INSERTs
    # with RETURNING in parameter order), not a multi-VALUES statement compiled anew for
    # every group.
    inserted = conn.execute(_ADMIT, values)
    return [Admission(int(pid), idx[n]) for n, (pid,) in enumerate(inserted)]


_ADMIT = insert(PROMPTS).returning(PROMPTS.c.id, sort_by_parameter_order=True)


def _prompt_values(row: AdmitRow, idx: int) -> dict[str, Any]:
    return {
        "job_id": row.job_id,
        "idx": idx,
        "messages": row.messages,
        "metadata": row.meta,  # the column's name (the ORM calls it `meta`)
        "status": PromptStatus.PENDING,
        "routed_tier": row.routed_tier,
        "router_score": row.router_score,
        "router_latency_ms": row.router_latency_ms,
    }


@dataclass(frozen=True, slots=True)
class ShadowAgreement:
    """A live job's shadows: sent, answered by the teacher, and agreeing with the served
    answer (the same text once case and whitespace are set aside)."""

    sent: int
    answered: int
    agreed: int

    @property
    def rate(self) -> float | None:
        return self.agreed / self.answered if self.answered else None


def _normal(text: str | None) -> str:
    return " ".join((text or "").split()).casefold()


def shadow_agreement(*, conn: Connection, live_job_id: int) -> ShadowAgreement:
    shadow = PROMPTS.alias("shadow")
    served = PROMPTS.alias("served")
    rows = conn.execute(
        select(shadow.c.status, shadow.c.response, served.c.response)
        .select_from(shadow.join(JOBS, JOBS.c.id == shadow.c.job_id))
        .join(served, served.c.id == shadow.c.metadata["live_prompt_id"].as_integer())
        .where(
            JOBS.c.mode == JobMode.SHADOW,
            shadow.c.metadata["live_job_id"].as_integer() == live_job_id,
        )
    ).all()
    answered = [(mine, theirs) for status, mine, theirs in rows if status == PromptStatus.SUCCEEDED]
    agreed = sum(_normal(mine) == _normal(theirs) for mine, theirs in answered)
    return ShadowAgreement(len(rows), len(answered), agreed)
