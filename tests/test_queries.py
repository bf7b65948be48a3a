"""The SQL of docs/querying.md, the filters of `distillery results`, and the query functions
of `models/` that no caller's test pins down, on SQLite and PostgreSQL with known rows and
exact expected results."""

import re
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import (
    Attempt,
    AttemptPurpose,
    AttemptStatus,
    Fallback,
    FallbackReason,
    Job,
    JobMode,
    JobStatus,
    Prompt,
    PromptStatus,
    TrainingFile,
    session_scope,
)
from models.example_queries import (
    COST_PER_TIER_PER_DAY,
    EXAMPLE_QUERIES,
    FAILED_PROMPTS,
    FALLBACK_RATE_PER_JOB,
    SLOWEST_PROMPTS,
    ExampleQuery,
)
from models.queries import stream_prompts
from models.reports import (
    FallbackTally,
    attempt_count,
    fallback_path_counts,
    fallback_reason_counts,
    fallback_tally,
    final_answers,
    final_tier_counts,
    prompt_usage,
    recent_jobs,
    routed_tier_counts,
)
from models.training_data import (
    AnswerRow,
    answer_rows,
    latest_training_file,
    low_confidence_prompt_ids,
    set_fine_tune_job_id,
    training_file_at_path,
    training_file_with_sha256,
)
from producer.results import records
from tests.helpers.services import make_engine

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "querying.md"
README = ROOT / "README.md"
MAY_1 = datetime(2024, 5, 1, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return MAY_1.replace(day=day, hour=hour, minute=minute)


def call(tier: str, when: datetime, *, cost: float = 0.0, **fields: Any) -> Attempt:
    fields.setdefault("status", AttemptStatus.OK)
    return Attempt(
        tier=tier,
        model=f"sim-{tier}",
        latency_ms=fields.pop("latency_ms", 50.0),
        prompt_tokens=fields.pop("prompt_tokens", 10),
        completion_tokens=fields.pop("completion_tokens", 20),
        cost_usd=cost,
        started_at=when,
        **fields,
    )


def prompt(idx: int, status: PromptStatus, **fields: Any) -> Prompt:
    messages = [{"role": "user", "content": f"question {idx}"}]
    return Prompt(idx=idx, custom_id=f"q{idx}", messages=messages, status=status, **fields)


def add_prompt(
    session: Session, job: Job, row: Prompt, calls: list[Attempt], escalations: int = 0
) -> Prompt:
    """A prompt, its calls, and `escalations` fallbacks along its calls' tiers."""
    row.job_id = job.id  # type: ignore[assignment]
    session.add(row)
    session.flush()
    for attempt in calls:
        attempt.prompt_id = row.id  # type: ignore[assignment]
        session.add(attempt)
    for before, after in list(pairwise(calls))[:escalations]:
        reason = (
            FallbackReason.LOW_CONFIDENCE
            if before.status == AttemptStatus.OK
            else FallbackReason.ERROR
        )
        session.add(
            Fallback(
                job_id=job.id,  # type: ignore[arg-type]
                prompt_id=row.id,  # type: ignore[arg-type]
                from_tier=before.tier,
                to_tier=after.tier,
                reason=reason,
                created_at=after.started_at,
            )
        )
    return row


def add_job(session: Session, name: str, mode: JobMode) -> Job:
    job = Job(name=name, mode=mode, status=JobStatus.FINISHED, created_at=MAY_1)
    session.add(job)
    session.flush()
    return job


def seed(engine: Engine) -> dict[str, int]:
    """Three jobs whose calls straddle midnight UTC of 1-2 May 2024."""
    with Session(engine, expire_on_commit=False) as session:
        teach = add_job(session, "teach", JobMode.TEACHER)
        routed = add_job(session, "routed", JobMode.ROUTE)
        other = add_job(session, "other", JobMode.ROUTE)
        seed_teacher(session, teach)
        seed_routed(session, routed)
        seed_other(session, other)
        session.commit()
        return {"teach": teach.id, "routed": routed.id, "other": other.id}  # type: ignore[dict-item]


def seed_teacher(session: Session, job: Job) -> None:
    for idx, (hour, minute, cost) in enumerate([(10, 0, 0.5), (23, 30, 0.25)]):
        row = prompt(idx, PromptStatus.SUCCEEDED, final_tier="frontier", latency_ms=300.0)
        add_prompt(session, job, row, [call("frontier", at(1, hour, minute), cost=cost)])


def seed_routed(session: Session, job: Job) -> None:
    cheap = prompt(
        0, PromptStatus.SUCCEEDED, routed_tier="small", final_tier="small", latency_ms=100.0
    )
    add_prompt(session, job, cheap, [call("small", at(2, 0, 15), cost=0.001)])
    escalated = prompt(
        1,
        PromptStatus.SUCCEEDED,
        routed_tier="small",
        final_tier="frontier",
        fell_back=True,
        latency_ms=900.0,
    )
    calls = [call("small", at(2, 1), cost=0.001), call("frontier", at(2, 1, 1), cost=0.3)]
    add_prompt(session, job, escalated, calls, escalations=1)
    failed = prompt(
        2,
        PromptStatus.FAILED,
        routed_tier="medium",
        final_tier="frontier",
        fell_back=True,
        latency_ms=5000.0,
        error="frontier: timed out after 30s",
    )
    calls = [
        call("medium", at(2, 2), status=AttemptStatus.ERROR, http_status=500, error="HTTP 500"),
        call("frontier", at(2, 2, 1), status=AttemptStatus.TIMEOUT, error="timed out"),
    ]
    add_prompt(session, job, failed, calls, escalations=1)
    add_prompt(session, job, prompt(3, PromptStatus.PENDING, routed_tier="small"), [])


def seed_other(session: Session, job: Job) -> None:
    failed = prompt(
        0, PromptStatus.FAILED, routed_tier="small", final_tier="small", error="HTTP 400"
    )
    bad_request = call("small", at(2, 3), status=AttemptStatus.ERROR, http_status=400)
    add_prompt(session, job, failed, [bad_request])
    answered = prompt(
        1, PromptStatus.SUCCEEDED, routed_tier="small", final_tier="small", latency_ms=80.0
    )
    router_call = call("small", at(2, 4), cost=0.0005, purpose=AttemptPurpose.ROUTE)
    add_prompt(session, job, answered, [router_call, call("small", at(2, 4, 1), cost=0.0005)])


def plain(value: Any) -> Any:
    """One spelling for both drivers: PostgreSQL returns NUMERIC as Decimal and booleans
    as bool where SQLite returns float and 0/1."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bool):
        return int(value)
    return value


def run(engine: Engine, query: ExampleQuery, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Far from UTC, so a day cut in the session's zone would show.
            connection.exec_driver_sql("SET TIME ZONE 'Pacific/Kiritimati'")
        rows = connection.execute(text(query.sql_for(connection.dialect.name)), params)
        return [tuple(plain(v) for v in row) for row in rows]


@pytest.fixture
def seeded(database_url: str) -> tuple[Engine, dict[str, int]]:
    engine = make_engine(database_url)
    return engine, seed(engine)


def test_cost_per_tier_per_day_counts_every_call_by_utc_day(
    seeded: tuple[Engine, dict[str, int]],
) -> None:
    engine, _ = seeded
    assert run(engine, COST_PER_TIER_PER_DAY) == [
        ("2024-05-01", "frontier", 2, 20, 40, 0.75),
        ("2024-05-02", "frontier", 2, 20, 40, 0.3),
        ("2024-05-02", "medium", 1, 10, 20, 0.0),
        ("2024-05-02", "small", 5, 50, 100, 0.003),
    ]


def test_fallback_rate_per_job_covers_finished_prompts_of_route_jobs(
    seeded: tuple[Engine, dict[str, int]],
) -> None:
    engine, jobs = seeded
    assert run(engine, FALLBACK_RATE_PER_JOB) == [
        (jobs["routed"], "routed", 3, 2, 66.7, 2),
        (jobs["other"], "other", 2, 0, 0.0, 0),
    ]


def test_slowest_prompts_of_a_job(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, jobs = seeded
    assert run(engine, SLOWEST_PROMPTS, job_id=jobs["routed"]) == [
        (2, "q2", "frontier", 1, 5000.0, 2),
        (1, "q1", "frontier", 1, 900.0, 2),
        (0, "q0", "small", 0, 100.0, 1),
    ]


def test_failed_prompts_of_a_job_with_their_errors(
    seeded: tuple[Engine, dict[str, int]],
) -> None:
    engine, jobs = seeded
    assert run(engine, FAILED_PROMPTS, job_id=jobs["routed"]) == [
        (2, "q2", "medium", "frontier", 2, "frontier: timed out after 30s"),
    ]
    assert run(engine, FAILED_PROMPTS, job_id=jobs["other"]) == [
        (0, "q0", "small", "small", 1, "HTTP 400"),
    ]


def sql_blocks(markdown: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```sql\n(.*?)```", markdown, re.S)]


def all_example_sql() -> set[str]:
    return {q.sql for q in EXAMPLE_QUERIES} | {
        q.postgresql for q in EXAMPLE_QUERIES if q.postgresql
    }


def test_the_doc_quotes_exactly_the_tested_queries() -> None:
    assert sorted(sql_blocks(DOC.read_text(encoding="utf-8"))) == sorted(all_example_sql())


def test_sql_shown_in_the_readme_is_tested_too() -> None:
    assert set(sql_blocks(README.read_text(encoding="utf-8"))) <= all_example_sql()


def idx_of(engine: Engine, job_id: int, **filters: Any) -> list[int]:
    with Session(engine) as session:
        return [row["idx"] for row in records(session, job_id, **filters)]


def test_results_filters_by_status_final_tier_and_fallback(
    seeded: tuple[Engine, dict[str, int]],
) -> None:
    engine, jobs = seeded
    job = jobs["routed"]
    assert idx_of(engine, job) == [0, 1, 2, 3]
    assert idx_of(engine, job, statuses=["failed"]) == [2]
    assert idx_of(engine, job, statuses=["succeeded", "pending"]) == [0, 1, 3]
    assert idx_of(engine, job, final_tiers=["frontier"]) == [1, 2]
    assert idx_of(engine, job, fell_back=True) == [1, 2]
    assert idx_of(engine, job, fell_back=False) == [0, 3]
    assert idx_of(engine, job, statuses=["succeeded"], final_tiers=["frontier"]) == [1]
    assert idx_of(engine, job, final_tiers=["small"], fell_back=True) == []


def test_enums_are_stored_as_their_values(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, jobs = seeded
    with engine.connect() as connection:
        statuses = connection.execute(
            text("SELECT status FROM prompts WHERE job_id = :job_id ORDER BY idx"),
            {"job_id": jobs["routed"]},
        )
        assert [s for (s,) in statuses] == ["succeeded", "succeeded", "failed", "pending"]
        reasons = connection.execute(text("SELECT reason FROM fallbacks ORDER BY id"))
        assert [r for (r,) in reasons] == ["low_confidence", "error"]


# --- the query functions of models/ ---------------------------------------------------------


def prompt_ids(session: Session, job_id: int) -> dict[int, int | None]:
    """{idx: prompt id} of a job."""
    return {p.idx: p.id for p in stream_prompts(session=session, job_id=job_id)}


def test_tier_counts_routed_and_final(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, jobs = seeded
    with session_scope(engine) as session:
        # Being answered again after a resume: a final tier, but not finished.
        retried = prompt(4, PromptStatus.PENDING, routed_tier="medium", final_tier="medium")
        add_prompt(session, session.get_one(Job, jobs["routed"]), retried, [])
    with Session(engine) as session:
        job = jobs["routed"]
        assert routed_tier_counts(session=session, job_id=job) == {"small": 3, "medium": 2}
        assert final_tier_counts(session=session, job_id=job, terminal_only=True) == {
            "small": 1,
            "frontier": 2,
        }
        assert final_tier_counts(session=session, job_id=job, terminal_only=False) == {
            "small": 1,
            "frontier": 2,
            "medium": 1,
        }
        assert routed_tier_counts(session=session, job_id=jobs["teach"]) == {}


def test_fallbacks_of_a_job(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, jobs = seeded
    with Session(engine) as session:
        routed, other = jobs["routed"], jobs["other"]
        # p1 and p2 fell back; p0-p2 finished, p3 is pending.
        tally = fallback_tally(session=session, job_id=routed)
        assert tally == FallbackTally(fell_back=2, finished=3)
        assert tally.rate == pytest.approx(2 / 3)
        assert fallback_tally(session=session, job_id=other) == FallbackTally(0, 2)
        assert fallback_reason_counts(session=session, job_id=routed) == {
            "low_confidence": 1,
            "error": 1,
        }
        assert fallback_path_counts(session=session, job_id=routed) == {
            ("small", "frontier"): 1,
            ("medium", "frontier"): 1,
        }
        assert fallback_path_counts(session=session, job_id=other) == {}
        ids = prompt_ids(session, routed)
        assert low_confidence_prompt_ids(session=session, job_id=routed) == {ids[1]}
        assert low_confidence_prompt_ids(session=session, job_id=other) == set()
    assert FallbackTally(0, 0).rate is None


def test_usage_and_attempts_of_a_job(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, jobs = seeded
    with session_scope(engine) as session:
        job = session.get_one(Job, jobs["other"])
        used = prompt(
            2, PromptStatus.SUCCEEDED, prompt_tokens=7, completion_tokens=5, cost_usd=0.25
        )
        add_prompt(session, job, used, [])
    with Session(engine) as session:
        usage = prompt_usage(session=session, job_id=jobs["other"])
        assert (usage.prompt_tokens, usage.completion_tokens, usage.cost_usd) == (7, 5, 0.25)
        nothing = prompt_usage(session=session, job_id=jobs["teach"])
        assert (nothing.prompt_tokens, nothing.completion_tokens, nothing.cost_usd) == (0, 0, 0)
        # other: a failed call, a router call and an answer; routed: 1 + 2 + 2 + 0.
        assert attempt_count(session=session, job_id=jobs["other"]) == 3
        assert attempt_count(session=session, job_id=jobs["routed"]) == 5


def test_final_answers_in_input_order(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, jobs = seeded
    with session_scope(engine) as session:
        job = session.get_one(Job, jobs["routed"])
        late = prompt(5, PromptStatus.SUCCEEDED, final_tier="small", meta={"category": "qa"})
        calls = [call("small", at(2, 5), prompt_tokens=3, completion_tokens=4)]
        add_prompt(session, job, late, calls)
    with Session(engine) as session:
        answers = final_answers(session=session, job_id=jobs["routed"])
    # p0 on small, p1 on frontier (its small answer escalated); p2 failed, p3 is pending.
    assert [a.messages[0]["content"] for a in answers] == ["question 0", "question 1", "question 5"]
    assert [(a.prompt_tokens, a.completion_tokens, a.meta) for a in answers] == [
        (10, 20, None),
        (10, 20, None),
        (3, 4, {"category": "qa"}),
    ]


def test_recent_jobs_newest_first(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, jobs = seeded
    with Session(engine) as session:
        assert [j.id for j in recent_jobs(session=session, limit=2)] == [
            jobs["other"],
            jobs["routed"],
        ]
        assert len(recent_jobs(session=session, limit=20)) == 3


def id_of(record: TrainingFile | None) -> int | None:
    assert record is not None
    return record.id


def test_training_files_found_by_job_content_and_path(
    seeded: tuple[Engine, dict[str, int]],
) -> None:
    engine, jobs = seeded
    teach = jobs["teach"]
    with session_scope(engine) as session:
        first = TrainingFile(job_id=teach, path="/out/t.jsonl", examples=2, sha256="aa")
        session.add(first)
        session.flush()
        again = TrainingFile(job_id=teach, path="/out/t.jsonl", examples=1, sha256="bb")
        session.add(again)
    with Session(engine) as session:
        assert id_of(latest_training_file(session=session, job_id=teach)) == again.id
        assert latest_training_file(session=session, job_id=jobs["routed"]) is None
        assert id_of(training_file_with_sha256(session=session, sha256="aa")) == first.id
        assert training_file_with_sha256(session=session, sha256="cc") is None
        assert id_of(training_file_at_path(session=session, path="/out/t.jsonl")) == again.id
        assert training_file_at_path(session=session, path="/out/other.jsonl") is None
    with session_scope(engine) as session:
        set_fine_tune_job_id(session=session, record=first, fine_tune_job_id="ftjob-1")
    with Session(engine) as session:
        assert session.get_one(TrainingFile, first.id).fine_tune_job_id == "ftjob-1"
        assert session.get_one(TrainingFile, again.id).fine_tune_job_id is None


def test_answer_rows_stream_in_input_order_across_fetches(
    seeded: tuple[Engine, dict[str, int]],
) -> None:
    engine, jobs = seeded
    with Session(engine) as session:
        rows = list(answer_rows(session=session, job_id=jobs["routed"], batch=1))
    assert [row[:4] for row in rows] == [
        AnswerRow(idx, status, [{"role": "user", "content": f"question {idx}"}], None)[:4]
        for idx, status in enumerate(["succeeded", "succeeded", "failed", "pending"])
    ]
    assert len({row.prompt_id for row in rows}) == 4  # each row names its prompt
    # The stored string, not an enum built per row (the reducer reads 100k of them).
    assert {type(row.status) for row in rows} == {str}
