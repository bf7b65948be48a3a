"""What every `distillery` command shares: the consoles, JSON output, the settings and the
engine, and the one place where failures become a message and a named exit code.

Heavy modules (SQLAlchemy, SQLModel, pydantic, Celery, redis, alembic, the openai SDK, numpy,
matplotlib) are imported inside functions throughout the CLI, so that `distillery --help`
and a command's own `--help` load none of them."""

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from producer.errors import BrokerUnavailable, UserError
from workers.errors import BadConfig, BadInput, DistilleryError, ExitCode, ServiceUnavailable

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from workers.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def handle_errors(command: F) -> F:
    """A failure the user can fix ends the command with one clear message and its named exit
    code; anything else (a bug) keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Exception as exc:
            error = as_distillery_error(exc)
            if error is None:
                raise
            print_error(error.format_message())
            sys.exit(error.exit_code)

    return wrapper  # type: ignore[return-value]


def print_error(message: str) -> None:
    # The message is the user's own text (paths, "[tiers.x]"): print it literally.
    console.print("[red]error:[/] ", end="")
    console.print(message, markup=False, emoji=False, highlight=False)


def as_distillery_error(exc: Exception) -> DistilleryError | None:
    """The error to report for EXC: ours as it is; a foreign one that means a service is
    down or the schema is missing, as ours; None when it is a bug."""
    if isinstance(exc, DistilleryError):
        return exc
    # Imported only on failure: redis and alembic would add ~0.5 s to every command's start.
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import OperationalError as DatabaseError
    from sqlalchemy.exc import ProgrammingError

    from models.migrate import UnrecognisedSchema

    if isinstance(exc, BrokerError | RedisConnectionError):
        return BrokerUnavailable.at(_redis_url(), exc)
    if isinstance(exc, ProgrammingError) and "does not exist" in str(exc.orig):
        return BadConfig("the database has no Distillery tables yet: run `distillery db upgrade`")
    if isinstance(exc, DatabaseError):
        return ServiceUnavailable(
            f"the database is unreachable: {str(exc.orig)[:300]}\n"
            "check DATABASE_URL and that the server runs"
        )
    if isinstance(exc, UnrecognisedSchema):
        return BadConfig(str(exc))
    return None


def _redis_url() -> str:
    """The URL in use: REDIS_URL, or `redis_url` in the config file when that is unset."""
    if "REDIS_URL" in os.environ:
        return os.environ["REDIS_URL"]
    try:
        return settings().redis_url or ""
    except Exception:  # a broken config is reported on its own; here it only hides the URL
        return ""


@contextmanager
def reported_as(code: ExitCode) -> Iterator[None]:
    """A bad value, log or labelled file found in this block is reported with CODE: the
    same bad number is a usage error in an option and bad input in a file, and a bad
    labelled file is the user's input although the routers call it a RouterError."""
    try:
        yield
    except (BadInput, BadConfig) as exc:
        raise UserError(str(exc), code) from None


def settings() -> "Settings":
    from workers.settings import get_settings

    return get_settings()


def engine() -> "Engine":
    from models import create_tables, get_engine

    db = get_engine(settings().database_url)
    if db.dialect.name == "sqlite":
        create_tables(db)  # the embedded default needs no setup; PostgreSQL uses `db upgrade`
    return db


class JobRef(click.ParamType):
    """A job by its id, or by its name (the newest job of that name): `distillery report
    live-2026-12-02` for the gateway's job of the day."""

    name = "JOB"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        from sqlmodel import Session

        from models.queries import job_id_named

        with Session(engine()) as session:
            found = job_id_named(session=session, name=text)
        if found is None:
            self.fail(
                f"no job has the id or name {text!r} (list them: distillery jobs)", param, ctx
            )
        return found


JOB = JobRef()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# --- what the analysis commands (cost simulate, router eval) share -----------------------


def plot_option() -> Any:
    return click.option(
        "--plot", "plot_path", type=click.Path(path_type=Path), help="draw a chart to PATH.png"
    )


def classifier_option() -> Any:
    return click.option(
        "--classifier",
        type=click.Path(path_type=Path),
        help="classifier router file (default: [router] classifier)",
    )


def finish(
    data: dict[str, Any], as_json: bool, plot_path: Path | None, plot: Any, show: Any
) -> None:
    """An analysis's output: the chart if asked for, then JSON or the printed tables."""
    if plot_path:
        with reported_as(ExitCode.USAGE):
            plot(data, plot_path)
    if as_json:
        emit_json(data)
        return
    show(out, data, source=data["source"])
    if plot_path:
        out.print(f"plot: {plot_path}")
