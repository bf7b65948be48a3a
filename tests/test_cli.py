"""The CLI contract: bad input and bad config give a clear message with its place, a named
exit code, and nothing stored or enqueued; the demo and the job commands work end to end."""

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import assert_nothing_stored, invoke, use_config_text
from tests.helpers.pipeline import read_jsonl
from workers.errors import ExitCode


@pytest.fixture
def cli_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_redis: Any
) -> Iterator[dict[str, Any]]:
    """A fresh SQLite database and settings re-read for each CLI call."""
    from workers.settings import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield {"url": url, "redis": clean_redis, "tmp": tmp_path}
    get_settings.cache_clear()


BAD_FILES: list[tuple[str, bytes, str]] = [
    ("empty.jsonl", b"", "file is empty"),
    ("latin1.jsonl", '{"prompt": "caf\xe9"}\n'.encode("latin-1"), ":1: not valid UTF-8"),
    ("array.jsonl", b'[{"prompt": "a"}, {"prompt": "b"}]\n', ":1: the file is a JSON array"),
    ("scalar.jsonl", b'{"prompt": "fine"}\n42\n', ":2: expected a JSON object"),
    ("missing.jsonl", b'{"prompt": "fine"}\n{"text": "no prompt"}\n', ':2: needs a "prompt"'),
    ("blank.jsonl", b'{"prompt": "fine"}\n{"prompt": "   "}\n', ":2: prompt is empty"),
    ("noprompt.csv", b"question,answer\nwhat?,that\n", ":1: CSV has no 'prompt' column"),
    ("binary.jsonl", bytes(range(256)) * 40, "binary file"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_input_file(cli_env: dict[str, Any], name: str, content: bytes, message: str) -> None:
    path = cli_env["tmp"] / name
    path.write_bytes(content)
    result = invoke("submit", str(path), "--wait")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert message in result.output and str(path) in result.output
    assert "Traceback" not in result.output
    assert_nothing_stored(cli_env)


def test_every_bad_line_is_reported(cli_env: dict[str, Any]) -> None:
    path = cli_env["tmp"] / "several.jsonl"
    path.write_text('{"prompt": "ok"}\nnot json\n{"prompt": ""}\n{"prompt": "ok too"}\n[1]\n')
    result = invoke("submit", str(path))
    assert result.exit_code == ExitCode.BAD_INPUT
    for line in (2, 3, 5):
        assert f"{path}:{line}:" in result.output
    assert_nothing_stored(cli_env)


def good_file(env: dict[str, Any]) -> Path:
    path = env["tmp"] / "good.jsonl"
    path.write_text('{"prompt": "What is 2 + 2?"}\n')
    return path


TIER = '[tiers.frontier]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
BAD_CONFIGS = [
    ("unknown_teacher_tier", TIER + '[teacher]\ntier = "huge"\n', "unknown tier 'huge'"),
    (
        "missing_key",
        TIER + 'api_key_env = "DISTILLERY_TEST_NO_SUCH_KEY"\n',
        "$DISTILLERY_TEST_NO_SUCH_KEY",
    ),
    ("bad_toml", "[tiers.frontier\n", "invalid TOML"),
    ("bad_url", TIER.replace("http://127.0.0.1:9/v1", "not a url"), "tiers.frontier.base_url"),
    ("bad_threshold", TIER + "[router]\nconfidence_threshold = 1.5\n", "confidence_threshold"),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config(
    cli_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, case: str, text: str, message: str
) -> None:
    use_config_text(monkeypatch, cli_env["tmp"] / f"{case}.toml", text)
    result = invoke("submit", str(good_file(cli_env)))
    assert result.exit_code == ExitCode.BAD_CONFIG, result.output
    assert message in result.output and "Traceback" not in result.output
    assert_nothing_stored(cli_env)


def test_unknown_tier_option(cli_env: dict[str, Any]) -> None:
    result = invoke("submit", str(good_file(cli_env)), "--tier", "gigantic")
    assert result.exit_code == ExitCode.BAD_CONFIG
    assert "unknown tier 'gigantic'" in result.output
    assert_nothing_stored(cli_env)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--router", "psychic"], ExitCode.BAD_CONFIG, "psychic"),
        (
            ["--router", "classifier", "--classifier", "/nonexistent/router.joblib"],
            ExitCode.BAD_CONFIG,
            "distillery router train",
        ),
        (["--threshold", "1.5"], ExitCode.USAGE, "1.5"),
    ],
    ids=["unknown_router", "missing_classifier", "threshold_out_of_range"],
)
def test_bad_route_options(
    cli_env: dict[str, Any], args: list[str], code: int, message: str
) -> None:
    result = invoke("submit", str(good_file(cli_env)), "--mode", "route", *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert_nothing_stored(cli_env)


def test_unknown_job(cli_env: dict[str, Any]) -> None:
    result = invoke("status", "999")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "job 999 not found" in result.output


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_demo_then_job_commands(tmp_path: Path) -> None:
    """The README's first command, embedded (no REDIS_URL), then the commands users run next."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "DISTILLERY_CONFIG")
    }
    demo = run_cli("demo", "--dir", "demo", env=env, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr + demo.stdout
    assert "training file:" in demo.stdout
    env["DISTILLERY_CONFIG"] = str(tmp_path / "demo" / "distillery.toml")

    status = json.loads(run_cli("status", "1", "--json", env=env, cwd=tmp_path).stdout)
    assert status["status"] == "finished" and status["total"] == 120
    assert status["completed"] + status["failed"] == 120
    training = status["training_file"]
    assert training["examples"] == len(read_jsonl(training["path"]))

    results = run_cli("results", "1", "--format", "csv", env=env, cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(results.stdout)))
    assert len(rows) == 120 and rows[0]["custom_id"] == "demo-001"

    reduced = run_cli(
        "reduce",
        "1",
        "--out",
        "t.jsonl",
        "--validation-fraction",
        "0.2",
        "--json",
        env=env,
        cwd=tmp_path,
    )
    summary = json.loads(reduced.stdout)
    assert summary["examples"] + summary["validation_examples"] == training["examples"]
    assert summary["validation_examples"] > 0
    assert len(read_jsonl(tmp_path / "t.validation.jsonl")) == summary["validation_examples"]


def test_via_batch_is_for_teacher_jobs(tmp_path: Path) -> None:
    source = tmp_path / "p.jsonl"
    source.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    for args in (
        ["--mode", "route", "--via", "batch"],
        ["--via", "online", "--batch-fallback", "online"],
    ):
        result = run_cli("submit", str(source), *args, "--wait", env=env, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "--via" in result.stderr or "--batch-fallback" in result.stderr


def test_a_budget_cap_on_the_batch_path_is_refused_not_ignored(tmp_path: Path) -> None:
    """Batch lines reserve nothing in the budget yet, so a capped batch job is refused
    before anything is stored, with the way out."""
    source = tmp_path / "p.jsonl"
    source.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    args = ("--via", "batch", "--max-cost", "40", "--wait")
    result = run_cli("submit", str(source), *args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "not applied on the Batch API path" in result.stderr
    assert "--via online" in result.stderr
    with sqlite3.connect(tmp_path / "distillery.db") as db:  # the CLI made its tables, no job
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
