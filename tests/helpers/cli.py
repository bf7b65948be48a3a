"""The `distillery` CLI run in-process (click's runner) with a config given as text, and the
check that a refused command stored and enqueued nothing."""

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlmodel import Session, func, select

from models import Job
from producer.cli import main
from tests.helpers.services import make_engine


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_nothing_stored(env: dict[str, Any]) -> None:
    with Session(make_engine(env["url"])) as session:
        assert session.exec(select(func.count()).select_from(Job)).one() == 0
    assert env["redis"].dbsize() == 0


def use_config_text(monkeypatch: pytest.MonkeyPatch, path: Path, text: str) -> None:
    """Write `text` to `path` and point the settings at it, re-read from now on."""
    from workers.settings import get_settings

    path.write_text(text)
    monkeypatch.setenv("DISTILLERY_CONFIG", str(path))
    get_settings.cache_clear()
