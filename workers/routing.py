"""The route step: decide the tier of each of a message's prompts with its job's router, in
the worker's call loop (the llm router's calls go through the same caller as answers), and
record the decisions in one transaction."""

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from models import AttemptPurpose
from models.work import OpenPrompt, RouteDecisionRow, open_prompts, record_route_decisions
from workers.attempts import attempt_from_completion, attempt_from_error
from workers.context import WorkerContext
from workers.job_settings import RouteSettings, load_job_settings
from workers.routers import Decision, decide_all


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def router_attempts(prompt_id: int, decision: Decision, ctx: WorkerContext) -> list[dict[str, Any]]:
    """The llm router's own model calls, as attempts with purpose `route` (cost included)."""
    if decision.asked_tier is None:
        return []
    tier = ctx.settings.require_tier(decision.asked_tier)
    rows = [
        attempt_from_error(prompt_id, tier, error, purpose=AttemptPurpose.ROUTE)
        for error in decision.failures
    ]
    if decision.call is not None:
        rows.append(
            attempt_from_completion(prompt_id, tier, decision.call, purpose=AttemptPurpose.ROUTE)
        )
    return rows


async def route_message(prompt_ids: list[int], ctx: WorkerContext) -> dict[str, list[int]]:
    """The prompts of a message by the tier they go to, in message order. Prompts with
    nothing left to do are left out; a prompt already routed (a redelivered message) keeps
    its decision."""
    rows = await asyncio.to_thread(_load, ctx, prompt_ids)
    todo = [row for row in rows if not row.routed_tier]
    decided = {row.id: row.routed_tier for row in rows if row.routed_tier}
    decisions = await _decide(todo, ctx)
    await asyncio.to_thread(_record, ctx, todo, decisions)
    decided.update({row.id: d.tier for row, d in zip(todo, decisions, strict=True)})
    by_tier: dict[str, list[int]] = defaultdict(list)
    for prompt_id in prompt_ids:
        if tier := decided.get(prompt_id):
            by_tier[tier].append(prompt_id)
    return dict(by_tier)


def _load(ctx: WorkerContext, prompt_ids: list[int]) -> list[OpenPrompt]:
    with ctx.engine.connect() as conn:
        return open_prompts(conn=conn, prompt_ids=prompt_ids)


async def _decide(rows: Sequence[OpenPrompt], ctx: WorkerContext) -> list[Decision]:
    """Decisions in row order: each job's prompts with that job's router, validated once."""
    by_job: dict[int, list[OpenPrompt]] = defaultdict(list)
    for row in rows:
        by_job[row.job_id].append(row)
    decided: dict[int, Decision] = {}
    for job_rows in by_job.values():
        job = load_job_settings(job_rows[0].mode, job_rows[0].params)
        assert isinstance(job, RouteSettings), "route messages carry route jobs' prompts"
        router = ctx.router_for(job)
        texts = [last_user_text(row.messages) for row in job_rows]
        concurrency = ctx.settings.router_concurrency
        for row, decision in zip(
            job_rows, await decide_all(router, texts, concurrency=concurrency), strict=True
        ):
            decided[row.id] = decision
    return [decided[row.id] for row in rows]


def _record(ctx: WorkerContext, rows: Sequence[OpenPrompt], decisions: list[Decision]) -> None:
    if not rows:
        return
    pairs = list(zip(rows, decisions, strict=True))
    attempts = [a for row, d in pairs for a in router_attempts(row.id, d, ctx)]
    decided = [RouteDecisionRow(row.id, d.tier, d.score, d.latency_ms) for row, d in pairs]
    with ctx.ledger.engine.begin() as conn:
        record_route_decisions(conn=conn, decisions=decided, attempts=attempts)
