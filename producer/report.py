"""The report of a routed job: where prompts were routed and where they ended, how often and
why they fell back, latency, tokens and cost per tier, and what the same answers would have
cost on the frontier tier alone.

`build_report` returns plain, JSON-serialisable data (the CLI prints it as tables or as JSON).
Everything is computed with SQL aggregates, so a job of 100k prompts is summarised without
loading its rows; percentiles fetch a single value each (see `_nearest_rank`).
"""

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import ColumnElement, FromClause, func, join, select
from sqlmodel import Session, col

from models import (
    TERMINAL_PROMPT_STATUSES,
    Attempt,
    AttemptPurpose,
    AttemptStatus,
    Fallback,
    Job,
    Prompt,
    PromptStatus,
)
from producer.status import get_job
from workers.settings import TierConfig

SAVINGS_FALLBACK_TARGET = 0.15
PERCENTILES = (50, 95)
TIMES = "\u00d7"  # the multiplication sign, spelled out: ruff flags it as confusable with x
# Prompts that reached an outcome. Cancelled prompts were stopped, not answered, so they say
# nothing about how often the router's choice had to be escalated.
FINISHED_PROMPT_STATUSES = (PromptStatus.SUCCEEDED, PromptStatus.FAILED)

# One row per (tier, purpose): tier, purpose, calls, prompt tokens, completion tokens, cost.
UsageRow = tuple[str, str, int, int, int, float]


def build_report(
    session: Session, job_id: int, *, tiers: Mapping[str, TierConfig]
) -> dict[str, Any]:
    """Everything the report shows, for one job. `tiers` is the configuration in order,
    cheapest first: its last tier is the frontier that routing is compared against."""
    job = get_job(session, job_id)
    prompts = _prompt_count(session, job_id)
    usage = _usage_by_tier(session, job_id)
    order = _tier_order(tiers, (row[0] for row in usage))
    return {
        "job": _job_fields(job),
        "prompts": prompts,
        "routed_distribution": _distribution(
            session, job_id, col(Prompt.routed_tier), tiers=tiers, total=prompts
        ),
        "final_distribution": _distribution(
            session,
            job_id,
            col(Prompt.final_tier),
            col(Prompt.status).in_(TERMINAL_PROMPT_STATUSES),
            tiers=tiers,
            total=prompts,
        ),
        "fallbacks": _fallbacks(session, job_id),
        "latency_ms": _answer_latency(session, job_id, order),
        "tokens_and_cost": _tokens_and_cost(usage, order),
        "route_calls": _route_calls(usage),
        "cost": _cost(session, job_id, tiers, routed_usd=sum(row[5] for row in usage)),
        "router_latency_ms": _router_latency(session, job_id),
    }


def _job_fields(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "mode": str(job.mode),
        "status": str(job.status),
        "router": job.router,
        "total": job.total,
        "completed": job.completed,
        "failed": job.failed,
        "cancelled": job.cancelled,
    }


def _tier_order(tiers: Mapping[str, TierConfig], seen: Iterable[str]) -> list[str]:
    """Configured tiers in config order, then any tier the rows name that the config no longer
    does (renamed or removed since the job ran): its calls still cost money."""
    unknown = sorted({tier for tier in seen if tier not in tiers})
    return [*tiers, *unknown]


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


def _round_usd(value: float) -> float:
    return round(value, 6)


# --- prompts -------------------------------------------------------------------------------


def _prompt_count(session: Session, job_id: int, *where: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(Prompt).where(col(Prompt.job_id) == job_id, *where)
    return int(session.execute(query).scalar_one())


def _distribution(
    session: Session,
    job_id: int,
    column: Any,
    *where: ColumnElement[bool],
    tiers: Mapping[str, TierConfig],
    total: int,
) -> dict[str, dict[str, Any]]:
    """{tier: {count, share}}; shares are of all the job's prompts, so routed and final bars
    compare directly and what is missing from the final one is failed or still pending."""
    query = (
        select(column, func.count())
        .where(col(Prompt.job_id) == job_id, column.is_not(None), *where)
        .group_by(column)
    )
    counts = {str(tier): int(n) for tier, n in session.execute(query)}
    return {
        tier: {"count": counts.get(tier, 0), "share": _share(counts.get(tier, 0), total)}
        for tier in _tier_order(tiers, counts)
    }


# --- fallbacks -----------------------------------------------------------------------------


def _fallbacks(session: Session, job_id: int) -> dict[str, Any]:
    fell_back = _prompt_count(session, job_id, col(Prompt.fell_back).is_(True))
    finished = _prompt_count(session, job_id, col(Prompt.status).in_(FINISHED_PROMPT_STATUSES))
    rate = fell_back / finished if finished else None
    by_reason = _fallback_counts(session, job_id, col(Fallback.reason))
    by_path = _fallback_counts(session, job_id, col(Fallback.from_tier), col(Fallback.to_tier))
    return {
        "prompts_fell_back": fell_back,
        "finished_prompts": finished,
        "rate": rate,
        "target": SAVINGS_FALLBACK_TARGET,
        "above_target": rate is not None and rate > SAVINGS_FALLBACK_TARGET,
        "events": sum(by_reason.values()),
        "by_reason": by_reason,
        "by_path": by_path,
    }


def _fallback_counts(session: Session, job_id: int, *columns: Any) -> dict[str, int]:
    """Fallback rows counted by `columns`, most frequent first, ties by name; several columns
    are joined with an arrow ("small→frontier")."""
    query = select(*columns, func.count()).where(col(Fallback.job_id) == job_id).group_by(*columns)
    counts = {
        "→".join(str(part) for part in row[:-1]): int(row[-1]) for row in session.execute(query)
    }
    # Sorted here, not in SQL: PostgreSQL orders a native enum (the reason) by declaration, not
    # by name, and a handful of groups costs nothing to sort.
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


# --- latency -------------------------------------------------------------------------------


def _attempts_of_job() -> FromClause:
    """Attempts with their prompt, which carries the job id."""
    return join(Attempt, Prompt, col(Attempt.prompt_id) == col(Prompt.id))


def _prompts() -> FromClause:
    return join(Prompt, Job, col(Prompt.job_id) == col(Job.id))


def _answer_latency(
    session: Session, job_id: int, order: list[str]
) -> dict[str, dict[str, Any] | None]:
    """Per tier, over its answer calls of every status (a timeout is latency the user waited
    through too); None for a tier without calls."""
    answers = (col(Prompt.job_id) == job_id, col(Attempt.purpose) == AttemptPurpose.ANSWER)
    return {
        tier: _latency_summary(
            session,
            col(Attempt.latency_ms),
            source=_attempts_of_job(),
            where=(*answers, col(Attempt.tier) == tier),
            count_key="calls",
        )
        for tier in order
    }


def _router_latency(session: Session, job_id: int) -> dict[str, Any] | None:
    return _latency_summary(
        session,
        col(Prompt.router_latency_ms),
        source=_prompts(),
        where=(col(Prompt.job_id) == job_id,),
        count_key="count",
    )


def _latency_summary(
    session: Session,
    column: Any,
    *,
    source: FromClause,
    where: tuple[ColumnElement[bool], ...],
    count_key: str,
) -> dict[str, Any] | None:
    """{count_key, p50, p95, max} of the non-null values of `column`; None when there are none."""
    where = (*where, column.is_not(None))
    query = select(func.count(column), func.max(column)).select_from(source).where(*where)
    count, maximum = session.execute(query).one()
    if not count:
        return None
    summary: dict[str, Any] = {count_key: int(count)}
    for pct in PERCENTILES:
        summary[f"p{pct}"] = _nearest_rank(session, column, source, where, int(count), pct)
    summary["max"] = float(maximum)
    return summary


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


# --- tokens and cost -----------------------------------------------------------------------


def _usage_by_tier(session: Session, job_id: int) -> list[UsageRow]:
    """(tier, purpose, calls, prompt tokens, completion tokens, cost) over all attempts."""
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
        .where(col(Prompt.job_id) == job_id)
        .group_by(tier, purpose)
    )
    return [
        (str(t), str(p), int(n), int(pt), int(ct), float(cost))
        for t, p, n, pt, ct, cost in session.execute(query)
    ]


def _usage_totals(rows: Iterable[UsageRow]) -> dict[str, Any]:
    rows = list(rows)
    return {
        "calls": sum(row[2] for row in rows),
        "prompt_tokens": sum(row[3] for row in rows),
        "completion_tokens": sum(row[4] for row in rows),
        "cost_usd": _round_usd(sum(row[5] for row in rows)),
    }


def _tokens_and_cost(usage: list[UsageRow], order: list[str]) -> dict[str, dict[str, Any]]:
    """Per tier, over calls of both purposes: routing with an LLM costs money too."""
    return {tier: _usage_totals(row for row in usage if row[0] == tier) for tier in order}


def _route_calls(usage: list[UsageRow]) -> dict[str, Any] | None:
    """The router's own model calls (LLM router), already included in the tier totals; None
    when the router made none (rules, classifier)."""
    rows = [row for row in usage if row[1] == AttemptPurpose.ROUTE]
    return _usage_totals(rows) if rows else None


def _cost(
    session: Session, job_id: int, tiers: Mapping[str, TierConfig], *, routed_usd: float
) -> dict[str, Any]:
    frontier_tier = _frontier_tier(tiers)
    prompt_tokens, completion_tokens = _final_answer_tokens(session, job_id)
    all_frontier = tiers[frontier_tier].cost_usd(prompt_tokens, completion_tokens)
    return {
        "routed_usd": _round_usd(routed_usd),
        "all_frontier_usd": _round_usd(all_frontier),
        "savings_usd": _round_usd(all_frontier - routed_usd),
        "savings_pct": round((1 - routed_usd / all_frontier) * 100, 4) if all_frontier else None,
        "times_cheaper": round(all_frontier / routed_usd, 4) if routed_usd else None,
        "frontier_tier": frontier_tier,
    }


def _frontier_tier(tiers: Mapping[str, TierConfig]) -> str:
    if not tiers:
        raise ValueError("no tiers configured: the report compares against the last tier")
    return list(tiers)[-1]


def _final_answer_tokens(session: Session, job_id: int) -> tuple[int, int]:
    """Tokens of each succeeded prompt's final answer: its last successful answer call on its
    final tier. Earlier successful calls (answers escalated for low confidence) are excluded:
    an all-frontier run would have made one call per prompt, not the whole chain."""
    final_attempt_ids = (
        select(func.max(Attempt.id))
        .select_from(_attempts_of_job())
        .where(
            col(Prompt.job_id) == job_id,
            col(Prompt.status) == PromptStatus.SUCCEEDED,
            col(Attempt.purpose) == AttemptPurpose.ANSWER,
            col(Attempt.status) == AttemptStatus.OK,
            col(Attempt.tier) == col(Prompt.final_tier),
        )
        .group_by(col(Attempt.prompt_id))
    )
    query = select(
        func.coalesce(func.sum(Attempt.prompt_tokens), 0),
        func.coalesce(func.sum(Attempt.completion_tokens), 0),
    ).where(col(Attempt.id).in_(final_attempt_ids))
    prompt_tokens, completion_tokens = session.execute(query).one()
    return int(prompt_tokens), int(completion_tokens)


# --- printing ------------------------------------------------------------------------------


def print_report(console: Console, report: dict[str, Any]) -> None:
    _print_header(console, report)
    console.print(_tier_table(report))
    _print_route_calls(console, report["route_calls"])
    _print_fallbacks(console, report["fallbacks"])
    console.print(_cost_table(report["cost"]))
    _print_router_latency(console, report["router_latency_ms"])


def _print_header(console: Console, report: dict[str, Any]) -> None:
    job = report["job"]
    name = f" ({job['name']})" if job["name"] else ""
    console.print(
        f"[bold]job {job['id']}[/]{name}: router {job['router'] or 'none'}, {job['status']}, "
        f"{report['prompts']:,} prompts ({job['completed']:,} succeeded, "
        f"{job['failed']:,} failed, {job['cancelled']:,} cancelled)"
    )


def _tier_table(report: dict[str, Any]) -> Table:
    table = Table(
        "tier",
        "routed",
        "final",
        "calls",
        "p50 ms",
        "p95 ms",
        "max ms",
        "tokens (in / out)",
        "cost",
        title="tiers",
    )
    for tier, usage in report["tokens_and_cost"].items():
        latency = report["latency_ms"].get(tier) or {}
        table.add_row(
            tier,
            _count_and_share(report["routed_distribution"].get(tier)),
            _count_and_share(report["final_distribution"].get(tier)),
            f"{usage['calls']:,}",
            _ms(latency.get("p50")),
            _ms(latency.get("p95")),
            _ms(latency.get("max")),
            f"{usage['prompt_tokens']:,} / {usage['completion_tokens']:,}",
            _usd(usage["cost_usd"]),
        )
    return table


def _count_and_share(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "0"
    return f"{entry['count']:,} ({_pct(entry['share'] * 100)})"


def _print_route_calls(console: Console, route: dict[str, Any] | None) -> None:
    if route:
        console.print(
            f"router calls: {route['calls']:,}, {_usd(route['cost_usd'])} "
            "(included in the tier totals above)"
        )


def _print_fallbacks(console: Console, fallbacks: dict[str, Any]) -> None:
    target = f"{fallbacks['target'] * 100:g} %"
    if fallbacks["rate"] is None:
        console.print("fallback rate: no finished prompts yet")
        return
    line = (
        f"fallback rate {_pct(fallbacks['rate'] * 100)} ({fallbacks['prompts_fell_back']:,} of "
        f"{fallbacks['finished_prompts']:,} finished prompts, {fallbacks['events']:,} escalations)"
    )
    if fallbacks["above_target"]:
        console.print(f"[red]{line}, above the {target} target[/]")
    else:
        console.print(f"[green]{line}, within the {target} target[/]")
    if fallbacks["by_reason"]:
        console.print("  reasons: " + _counts(fallbacks["by_reason"]))
        console.print("  paths: " + _counts(fallbacks["by_path"]))


def _cost_table(cost: dict[str, Any]) -> Table:
    table = Table(title="cost", show_header=False)
    table.add_row("routed", _usd(cost["routed_usd"]))
    table.add_row(f"all on {cost['frontier_tier']}", _usd(cost["all_frontier_usd"]))
    savings = cost["savings_pct"]
    table.add_row(
        "savings",
        f"{_usd(cost['savings_usd'])} ({_pct(savings)})" if savings is not None else "n/a",
    )
    table.add_row("cheaper by", _times(cost["times_cheaper"]))
    return table


def _print_router_latency(console: Console, latency: dict[str, Any] | None) -> None:
    if latency is None:
        console.print("router latency: not recorded")
        return
    console.print(
        f"router latency: p50 {_ms(latency['p50'])} ms, p95 {_ms(latency['p95'])} ms, "
        f"max {_ms(latency['max'])} ms ({latency['count']:,} prompts)"
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {n:,}" for key, n in counts.items())


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"  # rules decide in microseconds


def _usd(value: float) -> str:
    return f"${value:,.4f}"


def _pct(value: float) -> str:
    return f"{value:.1f} %"


def _times(value: float | None) -> str:
    if value is None:
        return "n/a"
    # Below 1 routing cost more than the frontier alone would have (fallbacks ate the savings).
    if value >= 1 or value == 0:
        return f"{value:.2f}{TIMES}"
    return f"{1 / value:.2f}{TIMES} more expensive"
