"""`distillery cost estimate|simulate`: what traffic costs on the configured tiers, all on
the last tier or routed by each strategy (the numbers are in producer/costs.py)."""

from pathlib import Path
from typing import Any

import click

from producer.cli.common import (
    JOB,
    classifier_option,
    console,
    emit_json,
    engine,
    finish,
    handle_errors,
    out,
    plot_option,
    reported_as,
    settings,
)
from producer.errors import UserError
from workers.errors import ExitCode

# Commands import the modules they work with when they run, so that `--help` loads none of
# them (producer/cli/common.py says which are heavy).


@click.group("cost")
def cost() -> None:
    """What traffic costs on the configured tiers, routed or not."""


@cost.command("estimate")
@click.option("--requests", type=click.IntRange(1), required=True, help="number of requests")
@click.option("--mix", required=True, help="share per tier in config order, e.g. 0.7,0.2,0.1")
@click.option(
    "--avg-tokens", type=click.FloatRange(0), required=True, help="tokens per request (in + out)"
)
@click.option(
    "--output-share",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="share of those tokens that are completion (priced at output_per_1k)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def cost_estimate(
    requests: int, mix: str, avg_tokens: float, output_share: float, as_json: bool
) -> None:
    """Cost of REQUESTS requests all on the last tier, and split over the tiers by MIX."""
    from producer.costs import estimate, parse_mix, print_estimate

    tiers = settings().tiers
    with reported_as(ExitCode.USAGE):
        shares = parse_mix(mix, list(tiers))
    data = estimate(
        tiers, requests=requests, mix=shares, avg_tokens=avg_tokens, output_share=output_share
    )
    if as_json:
        emit_json(data)
    else:
        print_estimate(out, data)


@cost.command("simulate")
@click.argument("log", type=click.Path(path_type=Path), required=False)
@click.option("--job", "job_id", type=JOB, help="use a job's prompts (id or name) instead of LOG")
@click.option(
    "--strategies",
    default="all-frontier,rules,classifier,llm,cascade",
    show_default=True,
    help="comma-separated: all-frontier, rules, classifier, llm, random, cascade",
)
@click.option("--monthly-requests", type=click.IntRange(1), required=True, help="requests a month")
@classifier_option()
@click.option(
    "--fallback-rate",
    type=click.FloatRange(0, 1),
    help="cascade: share escalated to the last tier (default: the job's, else 0.15)",
)
@click.option(
    "--completion-tokens",
    type=click.IntRange(0),
    help="answer tokens for rows without completion_tokens (default: as many as the prompt)",
)
@click.option("--sample", "sample_size", type=click.IntRange(1), help="route a seeded sample")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@plot_option()
@handle_errors
def cost_simulate(
    log: Path | None,
    job_id: int | None,
    strategies: str,
    monthly_requests: int,
    classifier: Path | None,
    fallback_rate: float | None,
    completion_tokens: int | None,
    sample_size: int | None,
    as_json: bool,
    plot_path: Path | None,
) -> None:
    """Route a traffic LOG (JSONL or CSV) or a finished --job with each strategy and project
    the monthly cost of each."""
    from producer import costs

    with reported_as(ExitCode.USAGE):
        names = costs.parse_strategies(strategies)
    requests, rate, source = _traffic(log, job_id, completion_tokens)
    rate = fallback_rate if fallback_rate is not None else rate
    with console.status("routing the traffic..."):
        data = costs.simulate(
            costs.sample(requests, sample_size),
            settings=settings(),
            strategies=names,
            monthly_requests=monthly_requests,
            fallback_rate=costs.DEFAULT_FALLBACK_RATE if rate is None else rate,
            classifier_path=classifier,
        )
    data["source"] = source
    if job_id is not None:
        data["recorded"] = _recorded(job_id, monthly_requests)
    finish(data, as_json, plot_path, costs.plot_simulation, costs.print_simulation)


def _recorded(job_id: int, monthly_requests: int) -> dict[str, Any]:
    """What the job itself recorded beside its routing: its cache hits and what they saved
    (and that saving at the same hit rate over `monthly_requests`), its budget used, and
    its answers by batch and online."""
    from sqlmodel import Session

    from producer.batch_status import answers_by_path
    from producer.status import cache_and_budget, get_job

    with Session(engine()) as session:
        job = get_job(session, job_id)
        recorded = cache_and_budget(session, job)
        recorded["answers"] = answers_by_path(session, job_id, settings().tiers)
    cache = recorded["cache"]
    per_request = cache["saved_usd"] / job.total if job.total else 0.0
    cache["hit_rate"] = round(cache["hits"] / job.total, 4) if job.total else 0.0
    cache["monthly_saved_usd"] = round(per_request * monthly_requests, 2)
    return recorded


def _traffic(
    log: Path | None, job_id: int | None, completion_tokens: int | None
) -> tuple[list[Any], float | None, str]:
    """The requests, the recorded fallback rate (jobs only) and a name for the source."""
    from sqlmodel import Session

    from producer import costs

    if (log is None) == (job_id is None):
        raise UserError("give a traffic LOG file or --job ID (one of them)", ExitCode.USAGE)
    if log is not None:
        with reported_as(ExitCode.BAD_INPUT):
            return costs.read_traffic(log, completion_tokens=completion_tokens), None, str(log)
    assert job_id is not None
    with Session(engine()) as session:
        requests, rate = costs.job_traffic(session, job_id)
    if not requests:
        raise UserError(f"job {job_id} has no answered prompts to simulate", ExitCode.BAD_INPUT)
    return requests, rate, f"job {job_id}"
