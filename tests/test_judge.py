"""`distillery judge`: a judge tier scores a job's answers as Celery work on that tier's queue
(real Redis, real worker processes, the simulator over HTTP playing the judge), on SQLite and
PostgreSQL; `reduce --min-score` filters on the scores; `report` shows their spread; an
unreadable reply is retried once then unscored; a judge tier that is down leaves every
answer unscored with the failure; a missing or empty rubric is refused before anything runs.
The expected scores are worked out here from the simulator's documented rule."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, func, select

from models import Attempt, AttemptPurpose
from models.tables import Judgement, JudgeRun, Rejection
from tests.helpers.cli import invoke
from tests.helpers.config import write_config
from tests.helpers.services import TEST_REDIS_URL, free_port, make_engine
from tests.test_training_data_quality import store_job
from workers.judge import parse_score


def answer_of(n_words: int, topic: str = "plants") -> str:
    """Prose from the simulator's generator (no loops: the reducer would drop those)."""
    from simulator.answers import answer

    prose = answer("writer", [("user", f"[long] {topic} {n_words}")], None, None).content
    return f"{topic.capitalize()} make sugar. " + " ".join(prose.split()[3 : n_words + 1])


ROWS = [
    {"prompt": f"How do plants make sugar, part {n}?", "response": answer_of(n)}
    for n in (30, 50, 70, 90, 110, 130)
] + [
    {"prompt": "Tell me a secret.", "response": "I'm sorry, but I can't share secrets at all."},
    {"prompt": "Quantum gravity?", "response": answer_of(60, "rocks")},
]


def expected_score(prompt: str, answer: str) -> int:
    """The simulator's rule (simulator/answers.py docstring), computed independently."""
    words = re.findall(r"[^\W_]+", answer.lower())
    if answer.lower().startswith(("i'm sorry", "i can't")) or len(words) < 5:
        return 1
    asked = {w for w in re.findall(r"[^\W_]+", prompt.lower()) if len(w) >= 4}
    return max(1, min(10, 2 * bool(asked & set(words)) + min(8, len(words) // 12)))


def test_parse_score_reads_common_shapes_and_refuses_the_rest() -> None:
    assert parse_score("SCORE: 7 - clear and correct") == (7, "clear and correct")
    assert parse_score("**Score:** 10/10. Perfect.") == (10, "Perfect.")
    assert parse_score("\n  8 — good, if long\nmore text") == (8, "good, if long")
    assert parse_score("Score = 3: off topic") == (3, "off topic")
    for bad in ("", "great answer", "SCORE: 11 - too high", "SCORE: 0", "~~ ### ?? ~~", "123"):
        assert parse_score(bad) is None


@pytest.fixture
def judged_env(
    tmp_path: Path, sim: Any, database_url: str, workers: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    from workers.settings import get_settings

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    extra = (
        f'[tiers.deadjudge]\nbase_url = "{dead}"\nmodel = "gone"\nmax_retries = 1\n'
        "backoff_base_s = 0.01\n[reducer]\nmin_length = 20\n"
    )
    config = write_config(
        tmp_path / "distillery.toml", base_url=sim.base_url, database_url=database_url,
        extra=extra,
    )  # fmt: skip
    workers.start(config, tiers="frontier,deadjudge", concurrency=4)
    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    engine = make_engine(database_url)
    return {"engine": engine, "job_id": store_job(engine, ROWS), "sim": sim, "tmp": tmp_path}


def judgements(engine: Any, run_id: int) -> list[Judgement]:
    with Session(engine) as session:
        query = select(Judgement).where(Judgement.judge_run_id == run_id)
        return list(session.exec(query.order_by(Judgement.prompt_id)).all())


def judge_attempts(engine: Any) -> list[Attempt]:
    with Session(engine) as session:
        return list(session.exec(select(Attempt).where(Attempt.purpose == AttemptPurpose.JUDGE)))


def test_judge_scores_then_reduce_keeps_the_good_ones(judged_env: dict[str, Any]) -> None:
    engine, job_id = judged_env["engine"], judged_env["job_id"]

    result = invoke("judge", str(job_id), "--tier", "frontier", "--wait", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    expected = [expected_score(r["prompt"], r["response"]) for r in ROWS]
    assert len(set(expected)) >= 4  # a spread worth filtering, or the test proves little
    verdicts = judgements(engine, summary["judge_run_id"])
    assert [v.score for v in verdicts] == expected
    assert all(v.reason and v.error is None for v in verdicts)
    attempts = judge_attempts(engine)
    assert len(attempts) == len(ROWS)  # one call each, on the judge tier, priced
    assert all(a.tier == "frontier" and a.cost_usd > 0 for a in attempts)
    spread: dict[str, int] = {}
    for score in expected:
        spread[str(score)] = spread.get(str(score), 0) + 1
    assert summary["scores"] == {k: spread[k] for k in sorted(spread, key=int)}

    report = invoke("report", str(job_id), "--json")
    assert json.loads(report.stdout)["judge"]["scores"] == summary["scores"]

    reduced = invoke("reduce", str(job_id), "--min-score", "7", "--json")
    assert reduced.exit_code == 0, reduced.output
    kept = json.loads(reduced.stdout)
    low = sum(1 for s in expected if s < 7)
    assert kept["rejected"].get("low_score", 0) + kept["rejected"].get("refusal", 0) == low
    assert kept["examples"] == len(ROWS) - low
    with Session(engine) as session:
        scored = session.exec(select(Rejection).where(Rejection.reason == "low_score")).all()
        assert scored and all(r.score is not None and r.score < 7 for r in scored)


def test_an_unreadable_judge_is_asked_again_then_unscored(judged_env: dict[str, Any]) -> None:
    engine, job_id = judged_env["engine"], judged_env["job_id"]
    judged_env["sim"].configure(None, garbage_rate=1.0)

    result = invoke("judge", str(job_id), "--tier", "frontier", "--wait", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["scores"] == {"unscored": len(ROWS)}
    verdicts = judgements(engine, summary["judge_run_id"])
    assert all(v.score is None and "unreadable judge reply (2 of 2)" in (v.error or "")
               for v in verdicts)  # fmt: skip
    assert len(judge_attempts(engine)) == 2 * len(ROWS)  # the reply and one retry

    reduced = invoke("reduce", str(job_id), "--min-score", "5")
    assert reduced.exit_code == 3
    assert "unscored" in reduced.output and "no training file was written" in reduced.output


def test_a_judge_tier_that_is_down(judged_env: dict[str, Any]) -> None:
    engine, job_id = judged_env["engine"], judged_env["job_id"]

    result = invoke("judge", str(job_id), "--tier", "deadjudge", "--wait", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["scores"] == {"unscored": len(ROWS)}
    assert "judge call failed" in summary["first_errors"][0]
    attempts = judge_attempts(engine)
    assert len(attempts) == 2 * len(ROWS)  # max_retries = 1: two tries each, both recorded
    assert all(a.status != "ok" and a.tier == "deadjudge" for a in attempts)


def test_a_missing_or_empty_rubric_is_refused(judged_env: dict[str, Any]) -> None:
    engine, job_id, tmp = judged_env["engine"], judged_env["job_id"], judged_env["tmp"]
    missing = invoke("judge", str(job_id), "--tier", "frontier", "--rubric", str(tmp / "no.md"))
    assert missing.exit_code == 3 and "rubric file" in missing.output
    assert "not found" in missing.output
    empty = tmp / "empty.md"
    empty.write_text("  \n\n")
    refused = invoke("judge", str(job_id), "--tier", "frontier", "--rubric", str(empty))
    assert refused.exit_code == 3 and "is empty" in refused.output
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(JudgeRun)).one() == 0
    assert judge_attempts(engine) == []
