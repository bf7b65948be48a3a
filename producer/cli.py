"""The `distillery` command (DESIGN.md → CLI contract; scripts rely on its options,
its `--json` output and its exit codes)."""

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from sqlalchemy.engine import Engine

from producer.cli_analysis import cost, router_calibrate, router_eval
from producer.cli_db import db_group
from producer.cli_finetune import finetune
from producer.cli_ops import metrics_command
from producer.errors import BrokerUnavailable, ExitCode, UserError, safe_url

if TYPE_CHECKING:
    from workers.routers.training import TrainReport
    from workers.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def handle_errors(command: F) -> F:
    """Turn known failures into one clear message and a named exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            print_error(str(exc))
            sys.exit(exc.code)
        except Exception as exc:
            known = translate(exc)
            if known is None:
                raise
            print_error(str(known))
            sys.exit(known.code)

    return wrapper  # type: ignore[return-value]


def print_error(message: str) -> None:
    # The message is the user's own text (paths, "[tiers.x]"): print it literally.
    console.print("[red]error:[/] ", end="")
    console.print(message, markup=False, emoji=False, highlight=False)


def translate(exc: Exception) -> UserError | None:
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import OperationalError as DatabaseError
    from sqlalchemy.exc import ProgrammingError

    from producer.readers import InputFileError
    from producer.status import JobNotFound
    from workers.reducer import ReduceError
    from workers.routers import RouterError
    from workers.settings import ConfigError

    if isinstance(exc, InputFileError):
        return UserError(f"{exc}\nnothing was stored or enqueued", ExitCode.BAD_INPUT)
    if isinstance(exc, ConfigError):
        return UserError(str(exc), ExitCode.BAD_CONFIG)
    if isinstance(exc, RouterError):
        return UserError(str(exc), ExitCode.BAD_CONFIG)
    if isinstance(exc, JobNotFound | ReduceError):
        return UserError(str(exc), ExitCode.NOT_FOUND)
    if isinstance(exc, BrokerUnavailable | BrokerError | RedisConnectionError):
        return UserError(
            f"Redis is unreachable at {safe_url(_redis_url())}: {exc}\n"
            "start Redis (redis-server), or unset REDIS_URL to run embedded with --wait",
            ExitCode.SERVICE_DOWN,
        )
    if isinstance(exc, ProgrammingError) and "does not exist" in str(exc.orig):
        return UserError(
            "the database has no Distillery tables yet: run `distillery db upgrade`",
            ExitCode.BAD_CONFIG,
        )
    if isinstance(exc, DatabaseError):
        return UserError(
            f"the database is unreachable: {str(exc.orig)[:300]}\n"
            "check DATABASE_URL and that the server runs",
            ExitCode.SERVICE_DOWN,
        )
    return None


def _redis_url() -> str:
    """The URL in use: REDIS_URL, or `redis_url` in the config file when that is unset."""
    if "REDIS_URL" in os.environ:
        return os.environ["REDIS_URL"]
    try:
        return settings().redis_url or ""
    except Exception:  # a broken config is reported on its own; here it only hides the URL
        return ""


def settings() -> "Settings":
    from workers.settings import get_settings

    return get_settings()


def engine() -> Engine:
    from models import create_tables, get_engine

    db = get_engine(settings().database_url)
    if db.dialect.name == "sqlite":
        create_tables(db)  # the embedded default needs no setup; PostgreSQL uses `db upgrade`
    return db


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distillery")
def main() -> None:
    """Distil a frontier LLM into cheaper models, and route requests to the cheapest tier."""


@main.command()
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
    wait: bool,
    as_json: bool,
) -> None:
    """Validate FILE (JSONL or CSV), store its prompts and enqueue them."""
    from models import JobMode
    from producer import jobs

    job_mode = JobMode(mode)
    if job_mode == JobMode.TEACHER and (router_name or classifier or threshold is not None):
        raise UserError("--router, --classifier and --threshold need --mode route", ExitCode.USAGE)
    if job_mode == JobMode.ROUTE and tier:
        raise UserError(
            "--tier is for teacher jobs; route jobs pick tiers per prompt", ExitCode.USAGE
        )
    overrides = {
        "tier": tier,
        "system_prompt": system_prompt,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "threshold": threshold,
        "classifier": str(classifier) if classifier else None,
    }
    conf = settings()
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


@main.command()
@click.argument("job_id", type=int)
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
    summary = jobs.summary(db, job_id)
    if as_json:
        emit_json(summary)
    else:
        jobs.print_summary(out, summary)


@main.command()
@click.argument("job_id", type=int)
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
@handle_errors
def results(
    job_id: int,
    fmt: str,
    out_path: Path | None,
    statuses: tuple[str, ...],
    tiers: tuple[str, ...],
    fell_back: bool | None,
) -> None:
    """Every prompt of a job with its answer, tiers, tokens, cost and error."""
    from sqlmodel import Session

    from producer.results import WRITERS, records
    from producer.status import get_job

    with Session(engine()) as session:
        get_job(session, job_id)
        rows = records(session, job_id, statuses=statuses, final_tiers=tiers, fell_back=fell_back)
        if out_path is None:
            WRITERS[fmt](rows, sys.stdout)
            return
        with out_path.open("w", encoding="utf-8", newline="") as handle:
            count = WRITERS[fmt](rows, handle)
    console.print(f"wrote {count} rows to {out_path}")


@main.command()
@click.argument("job_id", type=int)
@click.option("--out", "out_path", type=click.Path(path_type=Path), help="training file path")
@click.option(
    "--min-length", type=click.IntRange(0), help="drop answers shorter than this (characters)"
)
@click.option(
    "--validation-fraction", type=click.FloatRange(0, 1, max_open=True), help="share held out"
)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def reduce(
    job_id: int,
    out_path: Path | None,
    min_length: int | None,
    validation_fraction: float | None,
    as_json: bool,
) -> None:
    """Filter a teacher job's answers into an OpenAI chat fine-tuning JSONL file."""
    from producer import jobs

    summary = jobs.reduce(
        job_id,
        settings=settings(),
        engine=engine(),
        out=out_path,
        min_length=min_length,
        validation_fraction=validation_fraction,
    )
    if as_json:
        emit_json(summary)
    else:
        jobs.print_reduction(out, summary)


@main.command()
@click.argument("job_id", type=int)
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


@main.group()
def router() -> None:
    """Train and inspect routers."""


@router.command("train")
@click.argument("labeled", type=click.Path(path_type=Path), required=False)
@click.option(
    "--from-job",
    "from_job",
    type=int,
    help="label a finished route job's prompts by their outcomes (escalated: hard; "
    "answered confidently below the last tier: easy)",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default=Path("router.joblib"),
    show_default=True,
)
@click.option("--test-fraction", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="seeds the train/test split")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def router_train(
    labeled: Path | None,
    from_job: int | None,
    out_path: Path,
    test_fraction: float,
    seed: int,
    as_json: bool,
) -> None:
    """Train the classifier router on LABELED (CSV or JSONL), on a route job's own
    outcomes (--from-job JOB), or on both.

    Rows carry a `label` (easy/medium/hard or a tier name), or `weak_correct` and
    `strong_correct` as in RouteLLM's data."""
    import dataclasses

    from workers.routers.training import train_classifier

    tiers = list(settings().tiers)
    sources = None  # --from-job: where the rows came from
    with console.status("training the classifier router..."):
        if from_job is not None:
            result, sources = _train_from_job(
                from_job, labeled, out_path, tiers, test_fraction, seed
            )
        elif labeled is not None:
            result = train_classifier(
                labeled, out_path, test_fraction=test_fraction, seed=seed, tiers=tiers
            )
        else:
            raise UserError("give a LABELED file, --from-job JOB, or both", ExitCode.USAGE)
    if as_json:
        emit_json(dataclasses.asdict(result))
        return
    if sources:
        out.print(sources, markup=False)
    out.print(f"trained on {result.train_rows} rows, tested on {result.test_rows} held out")
    out.print(
        f"held-out accuracy {result.held_out_accuracy:.3f}"
        + (f", AUC {result.held_out_auc:.3f}" if result.held_out_auc is not None else "")
    )
    out.print(f"router file: [bold]{result.path}[/]")
    out.print(
        "use it: distillery submit FILE --mode route --router classifier "
        f"--classifier {result.path}"
    )


def _train_from_job(
    job_id: int,
    labeled: Path | None,
    out_path: Path,
    tiers: list[str],
    test_fraction: float,
    seed: int,
) -> tuple["TrainReport", str]:
    """The report of a router trained on JOB's outcomes, and where its rows came from."""
    from sqlmodel import Session

    from producer.status import get_job
    from workers.routers.history import train_from_job

    db = engine()
    with Session(db) as session:
        get_job(session, job_id)  # no such job: exit code 6, like every job command
    report = train_from_job(
        job_id,
        engine=db,
        out=out_path,
        labeled=labeled,
        tiers=tiers,
        test_fraction=test_fraction,
        seed=seed,
    )
    return report, report.sources()


@main.command()
@click.argument("job_id", type=int)
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


@main.command()
@click.argument("job_id", type=int)
@handle_errors
def cancel(job_id: int) -> None:
    """Stop JOB: its unfinished prompts are cancelled and no further calls are made."""
    from producer import jobs

    count = jobs.cancel(job_id, engine=engine())
    out.print(f"job {job_id}: cancelled {count} unfinished prompts")


@main.command()
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


@main.command()
@click.option(
    "--tiers", required=True, help="comma-separated tier queues to consume, e.g. small,frontier"
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="messages handled at once (each a batch of prompts); calls in flight are capped "
    "per tier by its `concurrency` in the config",
)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--no-control", is_flag=True, help="do not consume the control queue (reducer jobs)")
@handle_errors
def worker(tiers: str, concurrency: int, loglevel: str, no_control: bool) -> None:
    """Run a worker process for the given tiers (needs REDIS_URL)."""
    from producer.worker import run_worker

    run_worker(
        settings(),
        tiers=tiers,
        concurrency=concurrency,
        loglevel=loglevel,
        control=not no_control,
        engine=engine(),
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8900, show_default=True)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, path_type=Path),
    help="per-model behaviour (TOML or JSON)",
)
@handle_errors
def sim(host: str, port: int, config_file: Path | None) -> None:
    """Run the OpenAI-compatible model simulator."""
    from simulator import SimConfig, run

    config = SimConfig.from_file(config_file) if config_file else SimConfig.tiered()
    console.print(f"simulator on http://{host}:{port}/v1 (Ctrl-C to stop)")
    run(config, host=host, port=port)


@main.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path),
    default=Path("distillery-demo"),
    show_default=True,
    help="where the demo's database, config and files go",
)
@handle_errors
def demo(workdir: Path) -> None:
    """Run a whole teacher job against the local simulator, no services needed."""
    from producer.demo import run_demo

    run_demo(workdir, console=console, out=out)


main.add_command(metrics_command(handle_errors))
main.add_command(db_group(handle_errors, lambda: settings().database_url))
main.add_command(cost)
main.add_command(finetune)
router.add_command(router_eval)
router.add_command(router_calibrate)


if __name__ == "__main__":
    main()
