"""The error tree: each error class ends the real CLI with its named exit code and one line
(no traceback); the foreign failures (database, Redis, the broker, the schema) are mapped in
producer/cli/common.py to the same codes; and every DistilleryError in the code base has one
documented exit code."""

import importlib
import os
import pkgutil
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import kombu
import pytest
import redis
from click.testing import CliRunner, Result
from sqlmodel import Session

import producer
import workers
from models import Job, JobMode
from producer.cli import main
from producer.cli.common import as_distillery_error, handle_errors
from producer.context_window import PromptTooLong
from producer.costs import CostInputError
from producer.errors import BrokerUnavailable, UserError
from producer.readers import InputFileError
from producer.status import JobNotFound
from tests.helpers.services import make_engine
from workers.errors import (
    BadConfig,
    BadInput,
    DistilleryError,
    ExitCode,
    NotFound,
    ServiceUnavailable,
)
from workers.reducer import ReduceError
from workers.routers.base import RouterError
from workers.settings import ConfigError, get_settings
from workers.training.extra import TrainExtraMissing
from workers.training.run import CheckpointFailed

README = Path(__file__).resolve().parents[1] / "README.md"
PASSWORD = "errors-test-PASSWORD-4321"
TINY_CONTEXT = """
[tiers.frontier]
base_url = "http://127.0.0.1:9/v1"
model = "m"
context_tokens = 20
"""

# Every error class and the exit code the CLI ended with before the tree existed (scripts
# rely on them). UserError is missing on purpose: its code is given where it is raised.
EXPECTED: dict[type[DistilleryError], ExitCode] = {
    DistilleryError: ExitCode.ERROR,
    BadInput: ExitCode.BAD_INPUT,
    InputFileError: ExitCode.BAD_INPUT,
    PromptTooLong: ExitCode.BAD_INPUT,
    CostInputError: ExitCode.BAD_INPUT,
    BadConfig: ExitCode.BAD_CONFIG,
    ConfigError: ExitCode.BAD_CONFIG,
    RouterError: ExitCode.BAD_CONFIG,
    TrainExtraMissing: ExitCode.BAD_CONFIG,
    CheckpointFailed: ExitCode.BAD_CONFIG,
    ServiceUnavailable: ExitCode.SERVICE_DOWN,
    BrokerUnavailable: ExitCode.SERVICE_DOWN,
    NotFound: ExitCode.NOT_FOUND,
    JobNotFound: ExitCode.NOT_FOUND,
    ReduceError: ExitCode.NOT_FOUND,
}


def every_error_class() -> set[type[DistilleryError]]:
    """DistilleryError and all its subclasses, once every module of ours is imported."""
    for package in (workers, producer):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not module.name.endswith("__main__"):  # running those would start the CLI
                importlib.import_module(module.name)

    def below(cls: type[DistilleryError]) -> Iterator[type[DistilleryError]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from below(sub)

    return {DistilleryError, *below(DistilleryError)}


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite database, and the settings re-read for each test."""
    url = f"sqlite:///{tmp_path / 'errors.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def invoke(command: click.Command, *args: str) -> Result:
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def assert_reported(result: Result, code: ExitCode, *expected: str) -> None:
    assert result.exit_code == code, result.output
    assert result.output.startswith("error: "), result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.output


def refused_port() -> socket.socket:
    """A port bound but not listening: connections are refused, and no other process can
    take it meanwhile (this machine is shared)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# --- the tree itself ---------------------------------------------------------------------


def test_every_error_class_has_one_documented_exit_code() -> None:
    found = every_error_class()
    assert found - {UserError} == set(EXPECTED), "a new error class: add it to EXPECTED"
    for cls in found:
        assert cls.__doc__, f"{cls.__name__} says what it is for"
        assert cls is UserError or cls.exit_code == EXPECTED[cls], cls.__name__
    # Each exit code is defined on one class only, and the subclasses inherit it.
    defining = [cls for cls in found if "exit_code" in vars(cls)]
    assert len({cls.exit_code for cls in defining}) == len(defining)
    paragraph = README.read_text(encoding="utf-8").split("Exit codes, for scripts:")[1]
    paragraph = " ".join(paragraph.split("\n\n")[0].split())
    for code in ExitCode:
        assert re.search(rf"\b{code.value} [A-Za-z]", paragraph), f"README: exit code {code.value}"
    for cls in set(defining) - {DistilleryError}:  # "4 bad configuration (`BadConfig`)"
        documented = rf"\b{cls.exit_code.value} [^,]*`{cls.__name__}`"
        assert re.search(documented, paragraph), f"README: {cls.__name__}"


def test_user_error_takes_its_code_where_it_is_raised() -> None:
    assert UserError("bad option", ExitCode.USAGE).exit_code == ExitCode.USAGE
    assert UserError("not found", ExitCode.NOT_FOUND).exit_code == ExitCode.NOT_FOUND


@pytest.mark.parametrize(
    "error",
    [cls("what went wrong") for cls in EXPECTED] + [UserError("what went wrong", ExitCode.USAGE)],
    ids=lambda error: type(error).__name__,
)
def test_each_error_class_ends_the_cli_with_its_exit_code(error: DistilleryError) -> None:
    @click.command()
    @handle_errors
    def failing() -> None:
        raise error

    expected = EXPECTED.get(type(error), ExitCode.USAGE)
    assert_reported(invoke(failing), expected, "what went wrong")


def test_a_bug_keeps_its_traceback() -> None:
    @click.command()
    @handle_errors
    def buggy() -> None:
        raise KeyError("not the user's fault")

    assert as_distillery_error(KeyError("x")) is None
    with pytest.raises(KeyError):
        invoke(buggy)


# --- our errors, as the commands raise them ----------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def use_config(monkeypatch: pytest.MonkeyPatch, path: Path, text: str) -> None:
    monkeypatch.setenv("DISTILLERY_CONFIG", write(path, text))
    get_settings.cache_clear()


def test_input_file_error(cli_db: str, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.jsonl", '{"prompt": "fine"}\nnot json\n')
    result = invoke(main, "submit", bad, "--wait")
    assert_reported(result, ExitCode.BAD_INPUT, f"{bad}:2:", "nothing was stored or enqueued")


def test_prompt_too_long(cli_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_config(monkeypatch, tmp_path / "small.toml", TINY_CONTEXT)
    long = write(tmp_path / "long.jsonl", '{"prompt": "%s"}\n' % ("word " * 50))
    result = invoke(main, "submit", long, "--wait")
    assert_reported(result, ExitCode.BAD_INPUT, "tokens", "nothing was stored or enqueued")


def test_cost_input_error(cli_db: str, tmp_path: Path) -> None:
    log = write(tmp_path / "traffic.csv", "prompt,prompt_tokens\nhello,many\n")
    result = invoke(main, "cost", "simulate", log, "--monthly-requests", "10")
    assert_reported(result, ExitCode.BAD_INPUT, f"{log}: 1 bad row(s)", "line 2")


def test_config_error(cli_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_config(monkeypatch, tmp_path / "broken.toml", "[tiers.small\n")
    result = invoke(main, "jobs")
    assert_reported(result, ExitCode.BAD_CONFIG, "invalid TOML")


def test_router_error(cli_db: str, tmp_path: Path) -> None:
    good = write(tmp_path / "good.jsonl", '{"prompt": "What is 2 + 2?"}\n')
    result = invoke(main, "submit", good, "--mode", "route", "--router", "psychic", "--wait")
    assert_reported(result, ExitCode.BAD_CONFIG, "psychic")


def test_job_not_found(cli_db: str) -> None:
    assert_reported(invoke(main, "status", "999"), ExitCode.NOT_FOUND, "job 999 not found")


def test_reduce_error(cli_db: str) -> None:
    with Session(make_engine(cli_db)) as session:
        job = Job(mode=JobMode.ROUTE, name="routed")
        session.add(job)
        session.commit()
        job_id = str(job.id)
    result = invoke(main, "reduce", job_id)
    assert_reported(result, ExitCode.NOT_FOUND, "teacher and live jobs are reduced")


def test_user_error(cli_db: str, tmp_path: Path) -> None:
    good = write(tmp_path / "good.jsonl", '{"prompt": "What is 2 + 2?"}\n')
    result = invoke(main, "submit", good, "--router", "rules", "--wait")
    assert_reported(result, ExitCode.USAGE, "need --mode route")


def test_broker_unavailable(tmp_path: Path) -> None:
    # Its own process: this one's Celery app was built at import, on the test Redis.
    good = write(tmp_path / "good.jsonl", '{"prompt": "What is 2 + 2?"}\n')
    with refused_port() as sock:
        url = f"redis://:{PASSWORD}@127.0.0.1:{sock.getsockname()[1]}/0"
        env = {**os.environ, "REDIS_URL": url, "DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"}
        command = [sys.executable, "-m", "producer.cli", "submit", good]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == ExitCode.SERVICE_DOWN, done.stdout + done.stderr
    assert done.stderr.startswith("error: Redis is unreachable at redis://:***@127.0.0.1:")
    assert "cannot reach the broker" in done.stderr and "unset REDIS_URL" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr and "Traceback" not in done.stderr


# --- foreign errors, mapped in one place --------------------------------------------------


def test_unreachable_database(monkeypatch: pytest.MonkeyPatch) -> None:
    with refused_port() as sock:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{sock.getsockname()[1]}/distillery"
        monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        result = invoke(main, "jobs")
    get_settings.cache_clear()
    assert_reported(result, ExitCode.SERVICE_DOWN, "the database is unreachable", "DATABASE_URL")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_database_without_tables(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    result = invoke(main, "jobs")
    get_settings.cache_clear()
    assert_reported(result, ExitCode.BAD_CONFIG, "no Distillery tables yet", "db upgrade")


def test_unrecognised_schema(cli_db: str) -> None:
    with make_engine(cli_db).begin() as connection:
        connection.exec_driver_sql("ALTER TABLE jobs DROP COLUMN source")
    result = invoke(main, "db", "upgrade")
    assert_reported(result, ExitCode.BAD_CONFIG, "add_column jobs source", "distillery db stamp")


def redis_ping(url: str) -> None:
    redis.Redis.from_url(url, socket_connect_timeout=5).ping()


def broker_connect(url: str) -> None:
    with kombu.Connection(url) as connection:
        connection.ensure_connection(max_retries=1, timeout=5)


@pytest.mark.parametrize("connect", [redis_ping, broker_connect], ids=["redis", "kombu"])
def test_unreachable_redis(connect: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command()
    @handle_errors
    def talks_to_redis() -> None:
        connect(os.environ["REDIS_URL"])

    with refused_port() as sock:
        port = sock.getsockname()[1]
        monkeypatch.setenv("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
        result = invoke(talks_to_redis)
    masked = f"Redis is unreachable at redis://:***@127.0.0.1:{port}/0"
    assert_reported(result, ExitCode.SERVICE_DOWN, masked, "unset REDIS_URL")
    assert PASSWORD not in result.output
