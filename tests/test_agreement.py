"""`distillery eval agreement` over real HTTP against the simulator, whose answers are a pure
function of (model, messages): a reference job whose answers are the frontier model's own
for some prompts and something else for the rest agrees with the frontier tier on exactly
those, and with another model on none; normalisation ignores case and punctuation. With a
judge tier the simulator's judge stand-in (simulator/answers.py) says YES to the pairs that
share most of their words and NO to the rest."""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from models import Job, JobMode, JobStatus, Prompt, PromptStatus
from producer.agreement import judge_request, normalise, parse_verdict
from simulator import RunningSimulator
from simulator.answers import judge_verdict
from tests.helpers.cli import invoke
from tests.helpers.config import write_config
from tests.helpers.services import make_engine
from workers.errors import ExitCode

SYSTEM = "Answer briefly."


def frontier_answer(sim: RunningSimulator, question: str) -> str:
    body = {
        "model": "sim-frontier",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 16,
    }
    reply = httpx.post(f"{sim.base_url}/chat/completions", json=body, timeout=30).json()
    return str(reply["choices"][0]["message"]["content"])


@pytest.fixture
def env(
    tmp_path: Path, sim: RunningSimulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    from workers.settings import get_settings

    config = write_config(
        tmp_path / "distillery.toml", base_url=sim.base_url, database_url=sqlite_url
    )
    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield make_engine(sqlite_url)
    get_settings.cache_clear()


def reference_job(engine: Any, answers: list[tuple[str, str]]) -> int:
    with Session(engine) as session:
        params = {"system_prompt": SYSTEM, "temperature": 0.7, "tier": "frontier"}
        job = Job(mode=JobMode.TEACHER, status=JobStatus.FINISHED, total=len(answers),
                  params=params)  # fmt: skip
        session.add(job)
        session.flush()
        assert job.id is not None
        for idx, (question, answer) in enumerate(answers):
            session.add(Prompt(job_id=job.id, idx=idx, status=PromptStatus.SUCCEEDED,
                               messages=[{"role": "user", "content": question}],
                               response=answer))  # fmt: skip
        session.commit()
        return job.id


def test_agreement_counts_the_answers_equal_after_normalisation(
    env: Any, sim: RunningSimulator
) -> None:
    questions = [f"Question {n}: what is {n} plus {n}?" for n in range(6)]
    answers = []
    for n, question in enumerate(questions):
        own = frontier_answer(sim, question)
        # 0-2: the model's own answer (shouted, with a trailing '!'); 3-5: another one
        answers.append((question, f"  {own.upper()}!" if n < 3 else f"not {own}"))
    job_id = reference_job(env, answers)

    result = invoke("eval", "agreement", "--tier", "frontier", "--reference-job", str(job_id),
                    "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["prompts"], report["agreed"], report["failed_calls"]) == (6, 3, 0)
    assert [item["agrees"] for item in report["answers"]] == [True] * 3 + [False] * 3

    other = invoke("eval", "agreement", "--tier", "small", "--reference-job", str(job_id))
    assert other.exit_code == 0, other.output
    assert "agrees with job" in other.stdout and "on 0 of 6 prompts (0.0%)" in other.stdout


def test_agreement_needs_a_job_with_answers(env: Any) -> None:
    missing = invoke("eval", "agreement", "--tier", "frontier", "--reference-job", "42")
    assert missing.exit_code == ExitCode.NOT_FOUND
    empty = reference_job(env, [])
    result = invoke("eval", "agreement", "--tier", "frontier", "--reference-job", str(empty))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert f"job {empty} has no answered prompts" in result.stderr


def test_normalise() -> None:
    assert normalise("  Positive.\n") == normalise("positive") == "positive"
    assert normalise("\u201cNegative!\u201d") == "negative"
    assert normalise("two  words") == "two words"
    assert normalise(None) == ""


def test_a_chat_file_can_be_the_reference(env: Any, sim: RunningSimulator, tmp_path: Path) -> None:
    path = tmp_path / "heldout.jsonl"
    lines = []
    for n in range(10):
        question = f"Held-out question {n}?"
        answer = frontier_answer(sim, question) if n % 2 == 0 else "something else"
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                    {"role": "assistant", "content": answer}]  # fmt: skip
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    result = invoke("eval", "agreement", "--tier", "frontier", "--reference", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["prompts"], report["agreed"]) == (10, 5)
    assert [item["idx"] for item in report["answers"] if item["agrees"]] == [1, 3, 5, 7, 9]

    neither = invoke("eval", "agreement", "--tier", "frontier")
    assert neither.exit_code == ExitCode.USAGE and "give one reference" in neither.stderr


def judged_job(env: Any, sim: RunningSimulator) -> int:
    """Six prompts: 0-1 the frontier's own answer (exact), 2-3 its answer plus a word (most
    words shared: the stand-in judge says YES), 4-5 something else (NO)."""
    answers = []
    for n in range(6):
        question = f"Judged question {n}: name a colour?"
        own = frontier_answer(sim, question)
        reference = [own.upper(), f"{own} indeed", "a different thing entirely"][n // 2]
        answers.append((question, reference))
    return reference_job(env, answers)


def test_a_judge_tier_counts_the_answers_that_agree_in_meaning(
    env: Any, sim: RunningSimulator, tmp_path: Path
) -> None:
    job_id = judged_job(env, sim)
    result = invoke("eval", "agreement", "--tier", "frontier", "--reference-job", str(job_id),
                    "--judge", "small", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    counts = ("exact", "judged_agree", "judged_disagree", "judge_unparseable", "judge_failed")
    assert [report[key] for key in counts] == [2, 2, 2, 0, 0]
    assert (report["judge"], report["agreed"], report["agreement"]) == ("small", 4, 4 / 6)
    assert [item.get("verdict") for item in report["answers"]] == [None] * 2 + ["yes"] * 2 + [
        "no"
    ] * 2
    assert [item["agrees"] for item in report["answers"]] == [True] * 4 + [False] * 2
    # the judge saw only the four inexact pairs
    assert sim.stats()["by_model"]["sim-small"]["requests"] == 4

    # [eval] judge_tier does the same without --judge; the table reports the counts
    from workers.settings import get_settings

    config = tmp_path / "distillery.toml"
    config.write_text(config.read_text() + '\n[eval]\njudge_tier = "small"\n')
    get_settings.cache_clear()
    table = invoke("eval", "agreement", "--tier", "frontier", "--reference-job", str(job_id))
    assert table.exit_code == 0, table.output
    assert "on 4 of 6 prompts (66.7%)" in table.stdout
    assert "exact 2; judge small: 2 agree, 2 disagree, 0 unparseable, 0 failed" in table.stdout


def test_an_unknown_judge_tier_is_a_config_error(
    env: Any, sim: RunningSimulator, tmp_path: Path
) -> None:
    job_id = judged_job(env, sim)
    result = invoke("eval", "agreement", "--tier", "frontier", "--reference-job", str(job_id),
                    "--judge", "oracle")  # fmt: skip
    assert result.exit_code == ExitCode.BAD_CONFIG
    assert "unknown tier 'oracle' in --judge" in result.stderr

    from workers.settings import get_settings

    config = tmp_path / "distillery.toml"
    config.write_text(config.read_text() + '\n[eval]\njudge_tier = "oracle"\n')
    get_settings.cache_clear()
    result = invoke("eval", "agreement", "--tier", "frontier", "--reference-job", str(job_id))
    assert result.exit_code == ExitCode.BAD_CONFIG
    assert "unknown tier 'oracle' in [eval] judge_tier" in result.stderr


def test_a_failing_judge_is_reported_and_never_counts_as_agreement(
    env: Any, sim: RunningSimulator
) -> None:
    job_id = judged_job(env, sim)
    sim.fail_next(100, status=500, model="sim-small")  # more than the retries of both calls
    result = invoke("eval", "agreement", "--tier", "frontier", "--reference-job", str(job_id),
                    "--judge", "small")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "on 2 of 6 prompts" in result.stdout
    assert "judge small: 0 agree, 0 disagree, 0 unparseable, 4 failed" in result.stdout
    assert "judge failed" in result.stdout and "Traceback" not in result.output


def test_parse_verdict_reads_the_first_word_only() -> None:
    assert parse_verdict("YES") is parse_verdict("yes.") is parse_verdict("Yes, they do") is True
    assert parse_verdict("NO") is parse_verdict(" no!\n") is False
    for reply in ("Maybe", "NOPE", "The answer is YES", "", None):
        assert parse_verdict(reply) is None


def test_the_simulator_judge_says_yes_when_most_words_are_shared() -> None:
    def verdict(reference: str, candidate: str) -> str:
        return judge_verdict(judge_request(reference, candidate).messages[0]["content"])

    assert verdict("The sky is blue", "the sky is blue today") == "YES"  # 4 of 5 words
    assert verdict("The sky is blue", "grass is green") == "NO"  # 1 of 6
    assert verdict('say "hi"\nthen', "say hi then") == "YES"  # quotes, newlines
    assert judge_verdict("agree in meaning? no answers quoted") == "NO"
