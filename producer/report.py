"""The report of a routed job: where prompts were routed and where they ended, how often and
why they fell back, latency, tokens and cost per tier, and what the same answers would have
cost on the frontier tier alone.

`build_report` returns plain, JSON-serialisable data (the CLI prints it as tables or as JSON).
Everything is computed with SQL aggregates (`models.reports`), so a job of 100k prompts is
summarised without loading its rows.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from models import AttemptPurpose, Job, JobMode
from models.live import shadow_agreement
from models.reports import (
    Latency,
    TierUsage,
    answer_latency,
    fallback_path_counts,
    fallback_reason_counts,
    fallback_tally,
    final_answer_tokens,
    final_tier_counts,
    prompt_count,
    routed_tier_counts,
    router_latency,
    usage_by_tier,
)
from producer.batch_status import answer_paths_line, answers_by_path
from producer.status import cache_and_budget, cache_and_budget_rows, get_job
from workers.settings import TierConfig

SAVINGS_FALLBACK_TARGET = 0.15
PERCENTILES = (50, 95)
TIMES = "\u00d7"  # the multiplication sign, spelled out: ruff flags it as confusable with x


def build_report(
    session: Session, job_id: int, *, tiers: Mapping[str, TierConfig]
) -> dict[str, Any]:
    """Everything the report shows, for one job. `tiers` is the configuration in order,
    cheapest first: its last tier is the frontier that routing is compared against."""
    job = get_job(session, job_id)
    prompts = prompt_count(session=session, job_id=job_id)
    usage = usage_by_tier(session=session, job_id=job_id)
    order = _tier_order(tiers, (row.tier for row in usage))
    routed = routed_tier_counts(session=session, job_id=job_id)
    final = final_tier_counts(session=session, job_id=job_id, terminal_only=True)
    return {
        "job": _job_fields(job),
        "prompts": prompts,
        "routed_distribution": _distribution(routed, tiers=tiers, total=prompts),
        "final_distribution": _distribution(final, tiers=tiers, total=prompts),
        "fallbacks": _fallbacks(session, job_id),
        "latency_ms": _answer_latency(session, job_id, order),
        "tokens_and_cost": _tokens_and_cost(usage, order),
        "route_calls": _route_calls(usage),
        "cost": _cost(session, job_id, tiers, routed_usd=sum(row.cost_usd for row in usage)),
        "router_latency_ms": _latency_fields(
            router_latency(session=session, job_id=job_id, percentiles=PERCENTILES), "count"
        ),
        "shadow": _shadow(session, job) if job.mode == JobMode.LIVE else None,
        "answers_by_path": answers_by_path(session, job_id, tiers),
        **cache_and_budget(session, job),
        "judge": judge_scores(session, job_id),
        "drift": _drift(job, routed, prompts, tiers),
    }


def judge_scores(session: Session, job_id: int) -> dict[str, Any] | None:
    """The newest judge run's score distribution (`distillery judge`), None if never judged."""
    from models.quality import latest_judge_run, latest_scores
    from workers.reducer import score_distribution

    run = latest_judge_run(session=session, job_id=job_id)
    if run is None:
        return None
    scores = latest_scores(session=session, job_id=job_id) or {}
    judged = [s for s in scores.values() if s is not None]
    return {
        "judge_run_id": run.id,
        "tier": run.tier,
        "total": run.total,
        "judged": len(scores),
        "scores": score_distribution(scores),
        "mean_score": sum(judged) / len(judged) if judged else None,
    }


def _drift(
    job: Job, routed: Mapping[str, int], prompts: int, tiers: Mapping[str, TierConfig]
) -> dict[str, Any] | None:
    """The last tier's routed share against the classifier's calibrated one (a classifier
    job whose file records it), flagged past the margin."""
    if job.router != "classifier" or not tiers:
        return None
    from workers.routers.drift import calibrated_share, tier_drift

    params = job.params or {}
    last = list(params.get("tiers") or tiers)[-1]
    drift = tier_drift(
        tier=last,
        routed=routed.get(last, 0),
        total=prompts,
        calibrated=calibrated_share(params.get("classifier")),
    )
    return None if drift is None else drift.as_dict()


def _shadow(session: Session, job: Job) -> dict[str, Any]:
    """A live job's shadow requests (the teacher's answers to a sample of it)."""
    assert job.id is not None
    found = shadow_agreement(conn=session.connection(), live_job_id=job.id)
    return {
        "sent": found.sent,
        "answered": found.answered,
        "agreed": found.agreed,
        "agreement": found.rate,
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


def _distribution(
    counts: dict[str, int], *, tiers: Mapping[str, TierConfig], total: int
) -> dict[str, dict[str, Any]]:
    """{tier: {count, share}}; shares are of all the job's prompts, so routed and final bars
    compare directly and what is missing from the final one is failed or still pending."""
    return {
        tier: {"count": counts.get(tier, 0), "share": _share(counts.get(tier, 0), total)}
        for tier in _tier_order(tiers, counts)
    }


# --- fallbacks -----------------------------------------------------------------------------


def _fallbacks(session: Session, job_id: int) -> dict[str, Any]:
    tally = fallback_tally(session=session, job_id=job_id)
    rate = tally.rate
    by_reason = _most_frequent_first(fallback_reason_counts(session=session, job_id=job_id))
    paths = fallback_path_counts(session=session, job_id=job_id)
    return {
        "prompts_fell_back": tally.fell_back,
        "finished_prompts": tally.finished,
        "rate": rate,
        "target": SAVINGS_FALLBACK_TARGET,
        "above_target": rate is not None and rate > SAVINGS_FALLBACK_TARGET,
        "events": sum(by_reason.values()),
        "by_reason": by_reason,
        "by_path": _most_frequent_first({"→".join(path): n for path, n in paths.items()}),
    }


def _most_frequent_first(counts: dict[str, int]) -> dict[str, int]:
    """Most frequent first, ties by name ("small→frontier" for a path)."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


# --- latency -------------------------------------------------------------------------------


def _answer_latency(
    session: Session, job_id: int, order: list[str]
) -> dict[str, dict[str, Any] | None]:
    """Per tier, over its answer calls of every status; None for a tier without calls."""
    return {
        tier: _latency_fields(
            answer_latency(session=session, job_id=job_id, tier=tier, percentiles=PERCENTILES),
            "calls",
        )
        for tier in order
    }


def _latency_fields(latency: Latency | None, count_key: str) -> dict[str, Any] | None:
    """{count_key, p50, p95, max}; None when nothing was measured."""
    if latency is None:
        return None
    percentiles = {f"p{pct}": value for pct, value in latency.percentiles.items()}
    return {count_key: latency.count, **percentiles, "max": latency.maximum}


# --- tokens and cost -----------------------------------------------------------------------


def _usage_totals(rows: Iterable[TierUsage]) -> dict[str, Any]:
    rows = list(rows)
    return {
        "calls": sum(row.calls for row in rows),
        "prompt_tokens": sum(row.prompt_tokens for row in rows),
        "completion_tokens": sum(row.completion_tokens for row in rows),
        "cost_usd": _round_usd(sum(row.cost_usd for row in rows)),
    }


def _tokens_and_cost(usage: list[TierUsage], order: list[str]) -> dict[str, dict[str, Any]]:
    """Per tier, over calls of both purposes: routing with an LLM costs money too."""
    return {tier: _usage_totals(row for row in usage if row.tier == tier) for tier in order}


def _route_calls(usage: list[TierUsage]) -> dict[str, Any] | None:
    """The router's own model calls (LLM router), already included in the tier totals; None
    when the router made none (rules, classifier)."""
    rows = [row for row in usage if row.purpose == AttemptPurpose.ROUTE]
    return _usage_totals(rows) if rows else None


def _cost(
    session: Session, job_id: int, tiers: Mapping[str, TierConfig], *, routed_usd: float
) -> dict[str, Any]:
    """What the job cost against its final answers priced on the frontier tier: an
    all-frontier run would have made one call per prompt, not the whole chain."""
    frontier_tier = _frontier_tier(tiers)
    tokens = final_answer_tokens(session=session, job_id=job_id)
    all_frontier = tiers[frontier_tier].cost_usd(tokens.prompt_tokens, tokens.completion_tokens)
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


# --- printing ------------------------------------------------------------------------------


def print_report(console: Console, report: dict[str, Any]) -> None:
    _print_header(console, report)
    console.print(_tier_table(report))
    _print_route_calls(console, report["route_calls"])
    _print_fallbacks(console, report["fallbacks"])
    console.print(_cost_table(report["cost"]))
    for label, value in cache_and_budget_rows(report):
        console.print(f"{label}: {value}")
    _print_router_latency(console, report["router_latency_ms"])
    if report["answers_by_path"]["batch"]["answers"]:
        console.print(answer_paths_line(report["answers_by_path"]))
    _print_drift(console, report.get("drift"))
    if report.get("shadow") and report["shadow"]["sent"]:
        shadow = report["shadow"]
        agreement = "-" if shadow["agreement"] is None else f"{shadow['agreement']:.1%}"
        console.print(
            f"shadow: {shadow['sent']:,} sent to the teacher, {shadow['answered']:,} answered, "
            f"agreement with the served answer {agreement}"
        )
    if report.get("judge"):
        print_scores(console, report["judge"])


def print_scores(console: Console, judge: dict[str, Any]) -> None:
    spread = ", ".join(f"{k}: {v}" for k, v in judge["scores"].items()) or "none yet"
    mean = "-" if judge["mean_score"] is None else f"{judge['mean_score']:.2f}"
    console.print(
        f"judge scores (run {judge['judge_run_id']} on '{judge['tier']}', "
        f"{judge['judged']}/{judge['total']} judged, mean {mean}): {spread}"
    )


def _print_drift(console: Console, drift: dict[str, Any] | None) -> None:
    if not drift:
        return
    line = (
        f"drift: {_pct(drift['routed_share'] * 100)} routed to {drift['tier']}, calibrated "
        f"for {_pct(drift['calibrated_share'] * 100)}"
    )
    if drift["drifted"]:
        console.print(
            f"[yellow]{line}: more than {drift['margin'] * 100:g} points apart[/]; re-fit the "
            "thresholds on this traffic: distillery router calibrate SAMPLE "
            "--target-frontier-share S --write-router"
        )
    else:
        console.print(f"{line} (within {drift['margin'] * 100:g} points)")


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
