"""What a job looks like now: counts, cost, tokens, its training file. Plain data, so the
CLI can print it as a table or as JSON."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlmodel import Session

from models import Job
from models.reports import attempt_count, prompt_usage, recent_jobs
from models.savings import budget_cancelled, cache_savings
from models.training_data import latest_training_file
from models.types import utcnow
from models.work import answer_spend
from producer.batch_status import batches_summary
from workers.errors import NotFound
from workers.settings import TierConfig


class JobNotFound(NotFound):
    """No job with this id."""


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} not found (list jobs with: distillery jobs)")
    return job


def job_summary(
    session: Session, job_id: int, tiers: Mapping[str, TierConfig] | None = None
) -> dict[str, Any]:
    job = get_job(session, job_id)
    return {
        "id": job.id,
        "name": job.name,
        "mode": job.mode,
        "status": job.status,
        "total": job.total,
        "completed": job.completed,
        "failed": job.failed,
        "cancelled": job.cancelled,
        "pending": job.total - job.done,
        "fell_back": job.fell_back,
        **_usage(session, job_id),
        "attempts": attempt_count(session=session, job_id=job_id),
        "created_at": _iso(job.created_at),
        "finished_at": _iso(job.finished_at),
        "elapsed_s": _elapsed(job),
        "training_file": _training_file(session, job_id),
        "via": job.params.get("via", "online"),
        **batches_summary(session, job_id, tiers),
        **cache_and_budget(session, job),
    }


def cache_and_budget(session: Session, job: Job) -> dict[str, Any]:
    """The response cache's hits and what they saved; the job's caps, what its answer calls
    spent against them, and how many prompts the budget stopped."""
    assert job.id is not None
    conn = session.connection()
    savings = cache_savings(conn=conn, job_id=job.id)
    params = job.params or {}
    caps = params.get("tier_max_cost_usd") or {}
    spent = answer_spend(conn=conn, job_id=job.id)
    return {
        "cache": {
            "enabled": params.get("cache", True),
            "hits": savings.hits,
            "saved_usd": round(savings.saved_usd, 6),
        },
        "budget": {
            "max_cost_usd": params.get("max_cost_usd"),
            "tier_max_cost_usd": caps,
            "spent_usd": round(spent["all"], 6),
            "tier_spent_usd": {tier: round(spent.get(f"tier:{tier}", 0.0), 6) for tier in caps},
            "cancelled": budget_cancelled(conn=conn, job_id=job.id),
        },
    }


def cache_and_budget_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The cache's and the budget's lines of a summary (or a report), when they say something."""
    rows = []
    cache, budget = s["cache"], s["budget"]
    if cache["hits"] or not cache["enabled"]:
        state = "" if cache["enabled"] else " (off for this job)"
        rows.append(("cache hits", f"{cache['hits']:,}, saved ${cache['saved_usd']:.4f}{state}"))
    if budget["max_cost_usd"] is not None:
        cap = budget["max_cost_usd"]
        used = budget["spent_usd"] / cap if cap else 0.0
        rows.append(("budget", f"${budget['spent_usd']:.4f} of ${cap:g} ({used:.0%})"))
    for tier, cap in budget["tier_max_cost_usd"].items():
        rows.append((f"budget {tier}", f"${budget['tier_spent_usd'][tier]:.4f} of ${cap:g}"))
    if budget["cancelled"]:
        rows.append(("cancelled: budget", f"{budget['cancelled']:,} prompts (no call made)"))
    return rows


def _usage(session: Session, job_id: int) -> dict[str, Any]:
    usage = prompt_usage(session=session, job_id=job_id)
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_usd": round(usage.cost_usd, 6),
    }


def _training_file(session: Session, job_id: int) -> dict[str, Any] | None:
    record = latest_training_file(session=session, job_id=job_id)
    if record is None:
        return None
    return {
        "path": record.path,
        "examples": record.examples,
        "validation_path": record.validation_path,
        "validation_examples": record.validation_examples,
        "rejected": record.rejected,
        "sha256": record.sha256,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _elapsed(job: Job) -> float:
    end = job.finished_at or utcnow()
    return round((end - job.created_at).total_seconds(), 3)


def list_jobs(session: Session, limit: int = 20) -> list[Job]:
    return recent_jobs(session=session, limit=limit)
