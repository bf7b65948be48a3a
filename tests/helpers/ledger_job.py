"""A route job written straight into the ledger through the models, as a worker would leave
it: prompts with their tiers and answers, one attempt per call, a fallback per escalation.
Deterministic (from `seed`), and fast enough for the dashboard's 100,000-prompt bench
(COPY on PostgreSQL, executemany on SQLite)."""

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import Attempt, Fallback, JobMode, JobStatus, PromptStatus
from models.bulk import copy_insert
from models.queries import create_job
from models.tables import JOBS, PROMPTS

TIERS = ("small", "medium", "frontier")
PRICE_PER_1K = {"small": 0.1, "medium": 0.3, "frontier": 5.0}
STARTED = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
CHUNK = 5000


@dataclass(frozen=True)
class LedgerJob:
    job_id: int
    prompts: int
    failed: int
    fell_back: int


def write_route_job(
    engine: Engine, prompts: int, *, seed: int = 0, texts: dict[int, str] | None = None
) -> LedgerJob:
    """A finished route job of `prompts` prompts; `texts` replaces the prompt text at some
    indexes (hostile input for the escaping tests)."""
    outcome = _outcomes(random.Random(seed), prompts)
    texts = texts or {}
    for idx, row in enumerate(outcome["prompts"]):
        content = texts.get(idx, f"question {idx}: why?")
        row["messages"] = [{"role": "user", "content": content}]
    with Session(engine) as session:
        job = create_job(
            session=session,
            mode=JobMode.ROUTE,
            prompts=outcome["prompts"],
            name=f"ledger-{seed}",
            router="rules",
        )
        job_id = job.id
        assert job_id is not None
        query = select(PROMPTS.c.idx, PROMPTS.c.id).where(PROMPTS.c.job_id == job_id)
        ids = dict(session.execute(query).all())
        for row in outcome["attempts"]:
            row["prompt_id"] = ids[row.pop("idx")]
        for row in outcome["fallbacks"]:
            row["prompt_id"], row["job_id"] = ids[row.pop("idx")], job_id
        _insert(session, Attempt, outcome["attempts"])
        _insert(session, Fallback, outcome["fallbacks"])
        session.execute(
            update(JOBS)
            .where(JOBS.c.id == job_id)
            .values(
                status=JobStatus.FINISHED,
                completed=prompts - outcome["failed"],
                failed=outcome["failed"],
                fell_back=outcome["fell_back"],
                created_at=STARTED,
                finished_at=STARTED + timedelta(seconds=prompts / 100 + 1),
            )
        )
        session.commit()
    return LedgerJob(job_id, prompts, outcome["failed"], outcome["fell_back"])


def _outcomes(rng: random.Random, prompts: int) -> dict[str, Any]:
    attempts: list[dict[str, Any]] = []
    fallbacks: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    failed = fell_back = 0
    for idx in range(prompts):
        routed = TIERS[rng.choices((0, 1, 2), weights=(6, 2, 2))[0]]
        at = STARTED + timedelta(seconds=idx / 100)
        chain = [routed]
        if routed != "frontier" and rng.random() < 0.1:
            chain.append("frontier")
        status = PromptStatus.FAILED if rng.random() < 0.02 else PromptStatus.SUCCEEDED
        cost = 0.0
        for n, tier in enumerate(chain):
            last = n == len(chain) - 1
            ok = not (last and status == PromptStatus.FAILED)
            confidence = round(rng.uniform(0.85, 0.99) if last else rng.uniform(0.3, 0.79), 4)
            tokens = (rng.randint(20, 80), rng.randint(30, 200))
            call_cost = (tokens[0] + tokens[1]) * PRICE_PER_1K[tier] / 1000 if ok else 0.0
            cost += call_cost
            attempts.append(
                {
                    "idx": idx,
                    "purpose": "answer",
                    "tier": tier,
                    "model": f"sim-{tier}",
                    "status": "ok" if ok else "error",
                    "http_status": 200 if ok else 500,
                    "latency_ms": round(rng.uniform(50, 400) * (1 + TIERS.index(tier)), 1),
                    "prompt_tokens": tokens[0] if ok else 0,
                    "completion_tokens": tokens[1] if ok else 0,
                    "cost_usd": call_cost,
                    "confidence": confidence if ok else None,
                    "error": None if ok else "HTTP 500: the simulator failed this call",
                    "started_at": at,
                }
            )
            if not last:
                fallbacks.append(
                    {
                        "idx": idx,
                        "from_tier": tier,
                        "to_tier": chain[n + 1],
                        "reason": "low_confidence",
                        "confidence": confidence,
                        "threshold": 0.8,
                        "created_at": at,
                    }
                )
        failed += status == PromptStatus.FAILED
        fell_back += len(chain) > 1
        ok_row = status == PromptStatus.SUCCEEDED
        rows.append(
            {
                "status": status,
                "routed_tier": routed,
                "final_tier": chain[-1] if ok_row else None,
                "response": f"answer {idx} from {chain[-1]}: because." if ok_row else None,
                "confidence": attempts[-1]["confidence"],
                "fell_back": len(chain) > 1,
                "prompt_tokens": sum(a["prompt_tokens"] for a in attempts[-len(chain) :]),
                "completion_tokens": sum(a["completion_tokens"] for a in attempts[-len(chain) :]),
                "cost_usd": cost,
                "latency_ms": sum(a["latency_ms"] for a in attempts[-len(chain) :]),
                "error": None if ok_row else "every tier failed",
                "router_latency_ms": 0.05,
                "finished_at": at + timedelta(milliseconds=500),
            }
        )
    return {
        "attempts": attempts,
        "fallbacks": fallbacks,
        "prompts": rows,
        "failed": failed,
        "fell_back": fell_back,
    }


def _insert(session: Session, entity: Any, rows: list[dict[str, Any]]) -> None:
    if session.connection().dialect.name == "postgresql":
        copy_insert(session, entity, rows)
        return
    for chunk in _chunks(rows):
        session.execute(insert(entity), chunk)


def _chunks(rows: list[dict[str, Any]]) -> Any:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]
