"""Hostile input through the real `distillery submit` (issue 5, part 5). Each case: a clear
message with its place (file:line or config key), a non-zero exit code, nothing stored (no
job row, no Redis key) and never a traceback; or, for text that is odd but valid, accepted
and stored intact.

Where each case of the issue's list is tested (one test each; "here" is this file):

* a 10 MB single line: test_ten_megabyte_single_line (here)
* a prompt over its tier's context, policy reject:
  test_prompt_over_the_teacher_tiers_context_is_rejected (here)
* ... policy truncate: test_prompt_over_context_is_truncated_when_the_tier_says_so (here)
* ... route jobs (largest context among the job's tiers):
  test_route_prompt_is_checked_against_the_largest_context and
  test_route_prompt_that_fits_only_a_bigger_tier_is_accepted (here)
* duplicate custom_ids: test_duplicate_custom_ids (here)
* control characters and odd Unicode: test_control_characters_and_odd_unicode_round_trip (here)
* NUL: test_nul_character_is_rejected (here)
* a binary file: tests/test_cli.py::test_bad_input_file[binary.jsonl]
* an invalid TOML config: tests/test_cli.py::test_bad_config[bad_toml]
* a tier whose key variable is unset: tests/test_cli.py::test_bad_config[missing_key]
"""

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from models import Prompt
from producer.context_window import (
    TRUNCATION_METADATA_KEY,
    ContextLimit,
    PromptTooLong,
    context_limit,
    fit_to_context,
)
from producer.readers import FORMATS_HINT, PromptInput
from tests.helpers.cli import assert_nothing_stored, invoke, use_config_text
from tests.helpers.services import make_engine, postgres_database
from workers.errors import ExitCode
from workers.job_settings import JobSettings, RouteSettings, TeacherSettings
from workers.tokens import CHARS, chat_tokens

# Context windows small enough to hit with short prompts. No system prompt for the teacher,
# so a {"prompt": "x" * n} line is ceil(n / 4) + 4 + 3 tokens.
CONTEXT_CONFIG = """
[tiers.small]
base_url = "http://127.0.0.1:9/v1"
model = "sim-small"
context_tokens = 60
{small_policy}
[tiers.medium]
base_url = "http://127.0.0.1:9/v1"
model = "sim-medium"
context_tokens = 120
[tiers.frontier]
base_url = "http://127.0.0.1:9/v1"
model = "sim-frontier"
context_tokens = 300
[teacher]
tier = "small"
system_prompt = ""
"""


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_redis: Any
) -> Iterator[dict[str, Any]]:
    """A fresh SQLite database (the keys test_cli's helpers expect) and re-read settings."""
    from workers.settings import get_settings

    url = f"sqlite:///{tmp_path / 'hostile.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield {"url": url, "redis": clean_redis, "tmp": tmp_path}
    get_settings.cache_clear()


def write_lines(path: Path, *rows: Any) -> Path:
    """JSON Lines; str rows are written verbatim."""
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_rejected(result: Any, env: dict[str, Any], *expected: str) -> None:
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    for text in expected:
        assert text in result.output
    assert "nothing was stored or enqueued" in result.output
    assert "Traceback" not in result.output
    assert_nothing_stored(env)


def stored_prompts(env: dict[str, Any]) -> list[Prompt]:
    with Session(make_engine(env["url"])) as session:
        return list(session.exec(select(Prompt).order_by(Prompt.idx)))


def context_config(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, policy: str = "") -> None:
    text = CONTEXT_CONFIG.format(small_policy=policy)
    use_config_text(monkeypatch, env["tmp"] / "context.toml", text)


# ------------------------------------------------------------------------ size and shape


@pytest.mark.parametrize(
    "line",
    [
        json.dumps({"prompt": "x" * (10 * 1024 * 1024)}),
        "y" * (10 * 1024 * 1024),  # not even JSON, and no closing newline before EOF
    ],
    ids=["json_prompt", "garbage"],
)
def test_ten_megabyte_single_line(env: dict[str, Any], line: str) -> None:
    path = env["tmp"] / "huge.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line, encoding="utf-8")
    result = invoke("submit", str(path))
    reason = "over the limit of" if line.startswith("{") else "invalid JSON"
    assert_rejected(result, env, f"{path}:2: ")
    assert reason in result.output
    assert len(result.output) < 5000  # the line is described, never echoed


def test_duplicate_custom_ids(env: dict[str, Any]) -> None:
    path = write_lines(
        env["tmp"] / "dupes.jsonl",
        {"prompt": "a", "custom_id": "q-1"},
        {"prompt": "b", "custom_id": "q-2"},
        {"prompt": "c", "custom_id": "q-1"},
    )
    result = invoke("submit", str(path))
    assert_rejected(result, env, f"{path}:3: duplicate custom_id 'q-1' (first seen on line 1)")


@pytest.mark.parametrize(
    "content",
    [
        '{"prompt": "ok"}\n{"prompt": "before\\u0000after"}\n',
        # A raw NUL byte past the binary sniff (8 KB), so the file is read as text.
        '{"prompt": "ok"}\n' * 1000 + '{"prompt": "before\x00after"}\n',
    ],
    ids=["escaped", "raw_byte"],
)
def test_nul_character_is_rejected(env: dict[str, Any], content: str) -> None:
    path = env["tmp"] / "nul.jsonl"
    path.write_text(content, encoding="utf-8")
    line = content.count("\n")
    result = invoke("submit", str(path))
    assert_rejected(result, env, f"{path}:{line}: ", "NUL character")


# Valid text a careless pipeline mangles: C0 and C1 controls, escape sequences, bidi
# overrides, zero-width and combining marks, astral characters, line separators, BOM and
# non-characters. All of it must come back exactly as sent.
ODD_TEXTS = [
    "bell \x07 backspace \x08 vertical tab \x0b form feed \x0c escape \x1b[31mred\x1b[0m",
    "DEL \x7f, C1 NEL \x85 and CSI \x9b, a lone CR \r inside",
    "bidi \u202eevil\u202c and \u2066isolate\u2069, Hebrew \u05e9\u05dc\u05d5\u05dd",
    "zero width\u200b space, joiner \u200d, non-joiner \u200c, e\u0301 combining",
    "family \U0001f469\u200d\U0001f469\u200d\U0001f467, flag \U0001f1eb\U0001f1f7, \U0001d518",
    "separators \u2028 and \u2029, a BOM \ufeff mid-text, non-characters \ufffe \uffff",
    "private use \ue000, replacement \ufffd, CJK \u6f22\u5b57, tab\tinside",
]


def odd_rows() -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": text[::-1]},
                {"role": "user", "content": text},
            ],
            "custom_id": f"id-{index}-{text[:12]}",
            "metadata": {"note": text, f"key \u202e{index}": [text, {"deep": text}]},
        }
        for index, text in enumerate(ODD_TEXTS)
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_env(
    request: pytest.FixtureRequest, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """`env` on SQLite, or on a fresh PostgreSQL database (JSONB is the stricter store)."""
    if request.param == "sqlite":
        yield env
        return
    from workers.settings import get_settings

    for url in postgres_database():
        make_engine(url)  # the CLI creates tables on SQLite only; PostgreSQL needs them made
        monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        yield {**env, "url": url}


def test_control_characters_and_odd_unicode_round_trip(any_db_env: dict[str, Any]) -> None:
    env = any_db_env
    rows = odd_rows()
    path = write_lines(env["tmp"] / "odd.jsonl", *rows)
    submitted = invoke("submit", str(path), "--json")
    assert submitted.exit_code == 0, submitted.output
    job_id = str(json.loads(submitted.stdout)["id"])

    stored = stored_prompts(env)
    assert [(p.messages, p.custom_id, p.meta) for p in stored] == [
        (r["messages"], r["custom_id"], r["metadata"]) for r in rows
    ]

    exported = invoke("results", job_id)
    assert exported.exit_code == 0, exported.output
    # JSON Lines end at "\n" only: str.splitlines() would also split at U+2028 and U+0085.
    records = [json.loads(line) for line in exported.stdout.split("\n") if line]
    assert [(r["messages"], r["custom_id"], r["metadata"]) for r in records] == [
        (r["messages"], r["custom_id"], r["metadata"]) for r in rows
    ]

    csv_path = env["tmp"] / "odd.csv"
    assert invoke("results", job_id, "--format", "csv", "--out", str(csv_path)).exit_code == 0
    with csv_path.open(encoding="utf-8", newline="") as handle:
        cells = [(row["custom_id"], row["prompt"]) for row in csv.DictReader(handle)]
    assert cells == [(r["custom_id"], r["messages"][-1]["content"]) for r in rows]


# ---------------------------------------------------------------------- context windows


def test_prompt_over_the_teacher_tiers_context_is_rejected(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    context_config(env, monkeypatch)
    path = write_lines(env["tmp"] / "long.jsonl", {"prompt": "short"}, {"prompt": "x" * 400})
    result = invoke("submit", str(path))
    # ceil(400 / 4) + 4 per message + 3 for the reply = 107
    assert_rejected(
        result, env, f"{path}:2: prompt is ~107 tokens, over tier 'small' context of 60"
    )
    assert FORMATS_HINT not in result.output  # the format was fine; the hint would mislead
    assert f"{path}:1:" not in result.output


def test_max_tokens_is_reserved_for_the_answer(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    context_config(env, monkeypatch)
    path = write_lines(env["tmp"] / "tight.jsonl", {"prompt": "x" * 160})  # 47 tokens
    result = invoke("submit", str(path), "--max-tokens", "20")
    assert_rejected(
        result,
        env,
        f"{path}:1: prompt is ~47 tokens, over tier 'small' context of 60 "
        "less max_tokens 20 for the answer",
    )


def test_teacher_tier_option_sets_the_context(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    context_config(env, monkeypatch)
    path = write_lines(env["tmp"] / "long.jsonl", {"prompt": "x" * 400})
    result = invoke("submit", str(path), "--tier", "frontier")
    assert result.exit_code == 0, result.output
    assert len(stored_prompts(env)) == 1


def test_route_prompt_is_checked_against_the_largest_context(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    context_config(env, monkeypatch)
    path = write_lines(env["tmp"] / "route.jsonl", {"prompt": "x" * 1200})  # 307 tokens
    result = invoke("submit", str(path), "--mode", "route")
    assert_rejected(
        result,
        env,
        f"{path}:1: prompt is ~307 tokens, over tier 'frontier' context of 300 "
        "(the largest of the job's 3 tiers)",
    )


def test_route_prompt_that_fits_only_a_bigger_tier_is_accepted(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over small's and medium's context, within frontier's: the job can still answer it
    (a smaller tier's 400 escalates), so it is stored as it is."""
    context_config(env, monkeypatch)
    path = write_lines(env["tmp"] / "route.jsonl", {"prompt": "x" * 1000})  # 257 tokens
    result = invoke("submit", str(path), "--mode", "route")
    assert result.exit_code == 0, result.output
    [prompt] = stored_prompts(env)
    assert prompt.messages == [{"role": "user", "content": "x" * 1000}]
    assert prompt.meta is None


def test_prompt_over_context_is_truncated_when_the_tier_says_so(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    context_config(env, monkeypatch, policy='context_policy = "truncate"')
    long_text = "".join(f"word{i} " for i in range(80))  # 550 characters, 145 tokens
    path = write_lines(
        env["tmp"] / "long.jsonl",
        {"prompt": "short", "custom_id": "a"},
        {"prompt": long_text, "custom_id": "b", "metadata": {"source": "wiki"}},
    )
    result = invoke("submit", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == 2  # stdout stays JSON; the note is on stderr
    # 60 tokens less 4 (message) and 3 (reply) leave 53 tokens, 212 characters
    assert (
        f"note: {path}:2: prompt was ~145 tokens, over tier 'small' context of 60; "
        "kept the first 212 of 550 characters of its last user message"
    ) in result.stderr
    assert "truncated 1 prompt to fit tier 'small' context of 60" in result.stderr

    short, cut = stored_prompts(env)
    assert short.messages == [{"role": "user", "content": "short"}] and short.meta is None
    assert cut.messages == [{"role": "user", "content": long_text[:212]}]
    assert chat_tokens(cut.messages, CHARS) == 60  # the cut fills the context exactly
    assert cut.meta == {
        "source": "wiki",
        TRUNCATION_METADATA_KEY: {
            "tier": "small",
            "context_tokens": 60,
            "estimated_tokens": 145,
            "original_chars": 550,
            "kept_chars": 212,
        },
    }


def test_truncation_that_cannot_fit_is_rejected(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    context_config(env, monkeypatch, policy='context_policy = "truncate"')
    messages = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "hi"}]
    path = write_lines(env["tmp"] / "system.jsonl", {"messages": messages})
    result = invoke("submit", str(path))
    assert_rejected(result, env, f"{path}:1: prompt is ~112 tokens", "even with its last user")


# ---------------------------------------------------------- the limit's pieces, directly


def test_the_jobs_system_prompt_counts() -> None:
    prompt = PromptInput([{"role": "user", "content": "x" * 40}], None, None, line=1)
    limit = ContextLimit("small", context_tokens=20, answer_tokens=0, policy="reject")
    assert fit_to_context([prompt], limit=limit, job=JobSettings(), source="f").prompts == [prompt]
    with_system = JobSettings(system_prompt="s" * 40)  # 10 more tokens and 4 for the message
    with pytest.raises(PromptTooLong, match="prompt is ~31 tokens"):
        fit_to_context([prompt], limit=limit, job=with_system, source="f")


def test_a_tier_without_a_context_means_no_check() -> None:
    from workers.settings import Settings

    tiers = {
        name: {"base_url": "http://127.0.0.1:9/v1", "model": name, "context_tokens": tokens}
        for name, tokens in (("small", 60), ("frontier", None))
    }
    settings = Settings(tiers=tiers)
    assert context_limit(RouteSettings(tiers=("small", "frontier")), settings) is None
    limit = context_limit(TeacherSettings(tier="small", max_tokens=5), settings)
    assert limit == ContextLimit("small", 60, 5, "reject", largest_of=1)


def test_many_truncations_are_summarised() -> None:
    prompts = [
        PromptInput([{"role": "user", "content": "x" * 100}], None, None, line=n)
        for n in range(1, 31)
    ]
    limit = ContextLimit("small", context_tokens=10, answer_tokens=0, policy="truncate")
    fitted = fit_to_context(prompts, limit=limit, job=JobSettings(), source="f")
    assert fitted.truncated == 30
    assert fitted.notices[0].startswith("f:1: prompt was ~32 tokens")
    assert fitted.notices[-2:] == (
        "... and 10 more",
        "truncated 30 prompts to fit tier 'small' context of 10; "
        f"see metadata.{TRUNCATION_METADATA_KEY} in `distillery results`",
    )
    assert len(fitted.prompts) == 30
    assert all(len(p.messages[0]["content"]) == 12 for p in fitted.prompts)
