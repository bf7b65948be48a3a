"""The job commands of `distillery`: submit, status, results, report, reduce, resume, cancel
and jobs (DESIGN.md → CLI contract; scripts rely on their options, their `--json` output
and their exit codes). What they do is in producer/jobs.py; here they parse and print."""

import sys
from pathlib import Path
from typing import Any

import click

from producer.cli.common import JOB, console, emit_json, engine, handle_errors, out, settings
from producer.errors import UserError
from workers.errors import ExitCode

# Commands import the modules they work with when they run, so that `--help` loads none of
# them (producer/cli/common.py says which are heavy).


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--mode", type=click.Choice(["teacher", "route"]), default="teacher", show_default=True
)
@click.option("--router", "router_name", help="route jobs: rules | classifier | llm | random")
@click.option("--classifier", type=click.Path(path_type=Path), help="route jobs: router file")
@click.option(
    "--threshold", type=click.FloatRange(0, 1), help="route jobs: confidence below this escalates"
)
@click.option("--name", help="a name for the job (default: the file name)")
@click.option("--tier", help="teacher jobs: the tier to generate with (default: [teacher] tier)")
@click.option("--system-prompt", help="a system prompt for this job's calls")
@click.option("--temperature", type=click.FloatRange(0, 2), help="sampling temperature")
@click.option("--max-tokens", type=click.IntRange(1), help="cap on answer tokens")
@click.option(
    "--via",
    type=click.Choice(["online", "batch"]),
    help="teacher jobs: online calls, or the provider's Batch API at its price "
    "(default: the tier's `batch` setting)",
)
@click.option(
    "--batch-fallback",
    type=click.Choice(["batch", "online"]),
    help="--via batch: retry errored or expired lines in a new batch (default) or online",
)
@click.option("--seed", type=int, help="the requests' seed (another seed: other cached samples)")
@click.option(
    "--no-cache", is_flag=True, help="call the model even for requests the cache has answered"
)
@click.option(
    "--max-cost",
    type=float,
    metavar="USD",
    help="stop calling once the job's calls could cost more (default: [teacher]/[router] "
    "max_cost_usd)",
)
@click.option(
    "--dry-run", is_flag=True, help="validate FILE and estimate tokens and cost; store nothing"
)
@click.option("--wait", is_flag=True, help="show progress until the job ends, then a summary")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def submit(
    file: Path,
    mode: str,
    router_name: str | None,
    classifier: Path | None,
    threshold: float | None,
    name: str | None,
    tier: str | None,
    system_prompt: str | None,
    temperature: float | None,
    max_tokens: int | None,
    via: str | None,
    batch_fallback: str | None,
    seed: int | None,
    no_cache: bool,
    max_cost: float | None,
    dry_run: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Validate FILE (JSONL or CSV), store its prompts and enqueue them (--dry-run: only
    validate and estimate)."""
    from models import JobMode
    from producer import jobs

    job_mode = JobMode(mode)
    if job_mode == JobMode.TEACHER and (router_name or classifier or threshold is not None):
        raise UserError("--router, --classifier and --threshold need --mode route", ExitCode.USAGE)
    if job_mode == JobMode.ROUTE and tier:
        raise UserError(
            "--tier is for teacher jobs; route jobs pick tiers per prompt", ExitCode.USAGE
        )
    if job_mode == JobMode.ROUTE and (via or batch_fallback):
        raise UserError("--via and --batch-fallback are for teacher jobs", ExitCode.USAGE)
    if batch_fallback and via == "online":
        raise UserError("--batch-fallback needs --via batch", ExitCode.USAGE)
    overrides = {
        "tier": tier,
        "system_prompt": system_prompt,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "threshold": threshold,
        "classifier": str(classifier) if classifier else None,
        "seed": seed,
        "cache": False if no_cache else None,
        "max_cost_usd": _positive_cost(max_cost),
    }
    if job_mode == JobMode.TEACHER:
        overrides.update(via=via, batch_fallback=batch_fallback)
    conf = settings()
    if dry_run:
        from models import get_engine
        from producer.dry_run import preview, print_preview

        # Not `engine()`: that makes SQLite's tables, and a dry run stores nothing.
        db = get_engine(conf.database_url)
        estimate = preview(file, mode=job_mode, settings=conf, engine=db, overrides=overrides)
        if as_json:
            emit_json(estimate)
        else:
            print_preview(out, estimate)
        return
    if conf.redis_url is None and not wait:
        raise UserError(
            "REDIS_URL is not set, so there is no broker for separate workers.\n"
            "run embedded with --wait, or set REDIS_URL and start `distillery worker`",
            ExitCode.USAGE,
        )
    summary = jobs.submit_and_maybe_wait(
        file,
        mode=job_mode,
        router=router_name,
        settings=conf,
        engine=engine(),
        name=name,
        overrides=overrides,
        wait=wait,
        console=None if as_json else console,
    )
    if as_json:
        emit_json(summary)
    elif wait:
        jobs.print_summary(out, summary)
    else:
        out.print(f"submitted job [bold]{summary['id']}[/]: {summary['total']} prompts")
        out.print(f"follow it with: distillery status {summary['id']} --watch")


def _positive_cost(max_cost: float | None) -> float | None:
    if max_cost is not None and not max_cost > 0:  # `not >` also refuses NaN
        raise UserError(
            f"--max-cost must be more than 0 USD (got {max_cost:g}); leave it out for no cap",
            ExitCode.USAGE,
        )
    return max_cost


@click.command()
@click.argument("job_id", type=JOB)
@click.option("--watch", is_flag=True, help="show live progress until the job ends")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def status(job_id: int, watch: bool, as_json: bool) -> None:
    """Counts, cost and training file of a job."""
    from producer import jobs
    from producer.progress import wait_for_job

    db = engine()
    if watch:
        wait_for_job(db, job_id, console=None if as_json else console)
    summary = jobs.summary(db, job_id, settings())
    if as_json:
        emit_json(summary)
    else:
        jobs.print_summary(out, summary)


@click.command()
@click.argument("job_id", type=JOB)
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--out", "out_path", type=click.Path(path_type=Path), help="write here instead of stdout"
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["pending", "succeeded", "failed", "cancelled"]),
    help="only prompts with this status (repeatable)",
)
@click.option(
    "--tier", "tiers", multiple=True, help="only prompts whose final tier is this (repeatable)"
)
@click.option(
    "--fell-back/--no-fell-back",
    "fell_back",
    default=None,
    help="only prompts that escalated / that did not (default: both)",
)
@click.option(
    "--rejected",
    is_flag=True,
    help="the rows the newest reduce left out, with reason, duplicate_of and score",
)
@click.option("--reason", help="with --rejected: only this reason (e.g. near_duplicate)")
@handle_errors
def results(
    job_id: int,
    fmt: str,
    out_path: Path | None,
    statuses: tuple[str, ...],
    tiers: tuple[str, ...],
    fell_back: bool | None,
    rejected: bool,
    reason: str | None,
) -> None:
    """Every prompt of a job with its answer, tiers, tokens, cost and error (or, with
    --rejected, every row its reduce left out and why)."""
    from sqlmodel import Session

    from producer.report import judge_scores, print_scores
    from producer.results import REJECTED_WRITERS, WRITERS, records, rejected_records
    from producer.status import get_job

    if reason and not rejected:
        raise UserError("--reason goes with --rejected", ExitCode.USAGE)
    with Session(engine()) as session:
        get_job(session, job_id)
        if rejected:
            rows = rejected_records(session, job_id, reason=reason)
            writer = REJECTED_WRITERS[fmt]
        else:
            rows = records(
                session, job_id, statuses=statuses, final_tiers=tiers, fell_back=fell_back
            )
            writer = WRITERS[fmt]
        if out_path is None:
            writer(rows, sys.stdout)
        else:
            with out_path.open("w", encoding="utf-8", newline="") as handle:
                count = writer(rows, handle)
            console.print(f"wrote {count} rows to {out_path}")
        judged = judge_scores(session, job_id)
    if judged:  # on stderr, beside the rows: scripts reading stdout get only the rows
        print_scores(console, judged)


@click.command()
@click.argument("job_id", type=JOB)
@click.option(
    "--out",
    "out_path",
    # a str: a trailing slash (a directory to create) must survive
    type=click.Path(),
    help="training file path, or a directory (DIR/: job-ID.jsonl or .parquet inside it)",
)
@click.option(
    "--min-length", type=click.IntRange(0), help="drop answers shorter than this (characters)"
)
@click.option(
    "--validation-fraction", type=click.FloatRange(0, 1, max_open=True), help="share held out"
)
@click.option(
    "--near-duplicates",
    type=click.FloatRange(0, 1, min_open=True),
    help="drop rows this similar (Jaccard, in (0, 1]) to an earlier kept row",
)
@click.option(
    "--near-duplicate-field",
    type=click.Choice(["prompt", "answer", "both"]),
    help="what near-duplicates compare (default: both)",
)
@click.option("--min-score", type=click.IntRange(1, 10), help="drop answers the judge scored lower")
@click.option("--stratify-by", help="metadata field the validation split is stratified by")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["openai", "trl", "trl-prompt-completion", "parquet"]),
    help="output format (default: [reducer] format, openai)",
)
@click.option("--keep-truncated", is_flag=True, help="keep answers cut off at max_tokens")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def reduce(
    job_id: int,
    out_path: str | None,
    min_length: int | None,
    validation_fraction: float | None,
    near_duplicates: float | None,
    near_duplicate_field: str | None,
    min_score: int | None,
    stratify_by: str | None,
    fmt: str | None,
    keep_truncated: bool,
    as_json: bool,
) -> None:
    """Filter a teacher job's answers into a training file (OpenAI or TRL JSONL, or Parquet)
    with a dataset card beside it. Makes no model calls: run it again with other settings."""
    from producer import jobs

    changes: dict[str, Any] = {
        "min_length": min_length,
        "validation_fraction": validation_fraction,
        "near_duplicates": near_duplicates,
        "near_duplicate_field": near_duplicate_field,
        "min_score": min_score,
        "stratify_by": stratify_by,
        "format": fmt,
        "truncated_finish_reasons": [] if keep_truncated else None,
    }
    summary = jobs.reduce(
        job_id, settings=settings(), engine=engine(), out=out_path, changes=changes
    )
    if as_json:
        emit_json(summary)
    else:
        jobs.print_reduction(out, summary)


@click.command()
@click.argument("job_id", type=JOB)
@click.option("--json", "as_json", is_flag=True, help="the same numbers as JSON")
@click.option(
    "--plot", "plot_path", type=click.Path(path_type=Path), help="draw charts to PATH.png"
)
@handle_errors
def report(job_id: int, as_json: bool, plot_path: Path | None) -> None:
    """Routing report: tiers, fallbacks, latency, cost and savings of a job."""
    from sqlmodel import Session

    from producer.report import build_report, print_report

    with Session(engine()) as session:
        data = build_report(session, job_id, tiers=settings().tiers)
    if plot_path:
        from producer.report_plot import plot_report

        plot_report(data, plot_path)
    if as_json:
        emit_json(data)
    else:
        print_report(out, data)
        if plot_path:
            out.print(f"plot: {plot_path}")


@click.command()
@click.argument("job_id", type=JOB)
@handle_errors
def resume(job_id: int) -> None:
    """Re-enqueue every prompt of JOB that has no final answer yet."""
    from producer import jobs

    count = jobs.resume(job_id, settings=settings(), engine=engine())
    out.print(
        f"job {job_id}: re-enqueued {count} prompts"
        if count
        else f"job {job_id}: nothing left to do"
    )


@click.command()
@click.argument("job_id", type=JOB)
@handle_errors
def cancel(job_id: int) -> None:
    """Stop JOB: its unfinished prompts are cancelled and no further calls are made."""
    from producer import jobs

    count = jobs.cancel(job_id, engine=engine(), settings=settings())
    out.print(f"job {job_id}: cancelled {count} unfinished prompts")


@click.command()
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def jobs(limit: int, as_json: bool) -> None:
    """List recent jobs."""
    from producer import jobs as job_commands

    rows = job_commands.recent(engine(), limit)
    if as_json:
        emit_json(rows)
    else:
        job_commands.print_jobs(out, rows)


@click.command()
@click.argument("job_id", type=JOB)
@click.option("--tier", required=True, help="the judge tier (its queue, limits and prices)")
@click.option(
    "--rubric",
    "rubric_path",
    type=click.Path(path_type=Path),
    help="what a good answer is (default: a general rubric, see docs/training-data.md)",
)
@click.option("--wait", is_flag=True, help="show progress until every answer is judged")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def judge(job_id: int, tier: str, rubric_path: Path | None, wait: bool, as_json: bool) -> None:
    """Score every answer of JOB 1-10 with a one-line reason, on the judge tier's workers;
    then `distillery reduce JOB --min-score N`."""
    from producer.judge import judge_job, print_run

    summary = judge_job(
        job_id,
        settings=settings(),
        engine=engine(),
        tier=tier,
        rubric_path=rubric_path,
        wait=wait,
        console=None if as_json else console,
    )
    if as_json:
        emit_json(summary)
    else:
        print_run(out, summary)
        if not wait:
            out.print(f"it runs on the workers; the scores so far: distillery report {job_id}")


COMMANDS = [submit, status, results, report, reduce, resume, cancel, jobs, judge]
