"""The workers' group commit (`models.outcomes`, `workers.ledger`) on SQLite and PostgreSQL:
a group of records writes what each record says, a prompt becomes terminal and is counted
once however many records in however many groups finish it, the prompt's totals add up
to its attempts, and the job is reported finished to exactly one record."""

import asyncio
import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import (
    Attempt,
    AttemptStatus,
    Fallback,
    FallbackReason,
    Job,
    JobMode,
    JobStatus,
    Prompt,
    PromptStatus,
    get_write_engine,
    session_scope,
)
from models.outcomes import Record, write_records
from models.queries import cancel_job, create_job
from models.types import utcnow
from tests.helpers.services import make_engine
from workers.ledger import LedgerWriter


def new_job(engine: Engine, prompts: int) -> tuple[int, list[int]]:
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(prompts)]
    with session_scope(engine) as session:
        job = create_job(session=session, mode=JobMode.TEACHER, prompts=rows)
        job_id = job.id
    assert job_id is not None
    with Session(engine) as session:
        ids = session.execute(
            select(Prompt.id).where(Prompt.job_id == job_id).order_by(Prompt.idx)  # type: ignore[arg-type]
        ).scalars()
        return job_id, list(ids)


def attempt(
    prompt_id: int, tokens: int, status: AttemptStatus = AttemptStatus.OK
) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id,
        "purpose": "answer",
        "tier": "small",
        "model": "sim-small",
        "status": status,
        "http_status": 200 if status == AttemptStatus.OK else 500,
        "latency_ms": 10.0,
        "prompt_tokens": tokens,
        "completion_tokens": 2 * tokens,
        "cost_usd": tokens / 1000,
        "confidence": None,
        "error": None,
        "started_at": utcnow(),
    }


def answered(job_id: int, prompt_id: int, text: str, tokens: int = 10) -> Record:
    finish = {"status": PromptStatus.SUCCEEDED, "final_tier": "small", "response": text}
    return Record(job_id, prompt_id, [attempt(prompt_id, tokens)], finish=finish)


def write(engine_url: str, records: list[Record]) -> list[Any]:
    with get_write_engine(engine_url).begin() as conn:
        return write_records(conn, records)


def job_row(engine: Engine, job_id: int) -> Job:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def prompt_rows(engine: Engine, job_id: int) -> list[Prompt]:
    with Session(engine) as session:
        query = select(Prompt).where(Prompt.job_id == job_id).order_by(Prompt.idx)  # type: ignore[arg-type]
        return list(session.execute(query).scalars())


def test_a_group_finishes_each_prompt_once_and_the_job_once(database_url: str) -> None:
    engine = make_engine(database_url)
    job_id, ids = new_job(engine, 4)
    escalation = Record(
        job_id,
        ids[2],
        [attempt(ids[2], 5)],
        fallback={
            "job_id": job_id,
            "prompt_id": ids[2],
            "from_tier": "small",
            "to_tier": "large",
            "reason": FallbackReason.LOW_CONFIDENCE,
            "confidence": 0.2,
            "threshold": 0.5,
            "created_at": utcnow(),
        },
    )
    first = write(
        database_url,
        [
            answered(job_id, ids[0], "a0"),
            answered(job_id, ids[0], "a duplicate"),  # the same prompt twice in one group
            escalation,
            Record(job_id, ids[1], [attempt(ids[1], 1, AttemptStatus.ERROR)]),  # a failed call
        ],
    )
    assert [w.finished for w in first] == [True, False, False, False]
    assert not any(w.job_finished for w in first)

    failed = {"status": PromptStatus.FAILED, "final_tier": "small", "error": "HTTP 500"}
    second = write(
        database_url,
        [
            answered(job_id, ids[0], "too late"),  # already terminal: changes nothing
            Record(job_id, ids[1], [], finish=failed),
            answered(job_id, ids[2], "a2 from large", tokens=7),
            answered(job_id, ids[3], "a3"),
        ],
    )
    assert [w.finished for w in second] == [False, True, True, True]
    assert [w.job_finished for w in second].count(True) == 1

    job = job_row(engine, job_id)
    assert (job.status, job.completed, job.failed, job.fell_back) == (JobStatus.FINISHED, 3, 1, 1)
    prompts = prompt_rows(engine, job_id)
    assert [p.response for p in prompts] == ["a0", None, "a2 from large", "a3"]
    assert [p.status for p in prompts] == [
        PromptStatus.SUCCEEDED,
        PromptStatus.FAILED,
        PromptStatus.SUCCEEDED,
        PromptStatus.SUCCEEDED,
    ]
    assert prompts[1].error == "HTTP 500" and prompts[1].prompt_tokens == 1
    # Totals are the sums of the prompt's attempts: both calls of the escalated prompt.
    assert (prompts[2].prompt_tokens, prompts[2].completion_tokens) == (5 + 7, 2 * (5 + 7))
    assert prompts[2].fell_back and not prompts[3].fell_back
    with Session(engine) as session:
        assert len(session.execute(select(Attempt)).all()) == 7  # every call, even unused ones
        assert len(session.execute(select(Fallback)).all()) == 1


def test_a_cancel_wins_over_outcomes_written_after_it(database_url: str) -> None:
    engine = make_engine(database_url)
    job_id, ids = new_job(engine, 3)
    write(database_url, [answered(job_id, ids[0], "a0")])
    with session_scope(engine) as session:
        assert cancel_job(session=session, job_id=job_id) == 2
    late = write(database_url, [answered(job_id, ids[1], "a1")])
    assert not late[0].finished
    job = job_row(engine, job_id)
    assert (job.status, job.completed, job.cancelled) == (JobStatus.CANCELLED, 1, 2)
    # The call that ended after the cancel is still on record: it was paid for.
    with Session(engine) as session:
        calls = session.execute(select(Attempt).where(Attempt.prompt_id == ids[1])).all()  # type: ignore[arg-type]
        assert len(calls) == 1


def test_the_writer_commits_from_many_threads_and_counts_once(database_url: str) -> None:
    """Records submitted from many threads at once, every prompt finished twice: each is
    counted once, and exactly one future reports the job finished."""
    engine = make_engine(database_url)
    job_id, ids = new_job(engine, 300)
    writer = LedgerWriter(get_write_engine(database_url))
    futures: list[Any] = []
    lock = threading.Lock()

    def finish_all(copy: int) -> None:
        for pid in ids:
            future = writer.submit(answered(job_id, pid, f"answer {pid} copy {copy}"))
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=finish_all, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = [future.result(timeout=60) for future in futures]
    assert sum(r.finished for r in results) == 300
    assert sum(r.job_finished for r in results) == 1
    job = job_row(engine, job_id)
    assert (job.status, job.completed, job.total) == (JobStatus.FINISHED, 300, 300)


def test_one_bad_record_fails_alone(database_url: str) -> None:
    """A record the database refuses (here: a prompt id that does not exist) fails its own
    future; the others of its group are committed."""
    engine = make_engine(database_url)
    job_id, ids = new_job(engine, 2)
    writer = LedgerWriter(get_write_engine(database_url))
    good = [writer.submit(answered(job_id, pid, "ok")) for pid in ids]
    bad = writer.submit(answered(job_id, 10**9, "no such prompt"))
    assert all(f.result(timeout=60).finished for f in good)
    assert bad.exception(timeout=60) is not None
    assert job_row(engine, job_id).completed == 2


def test_a_call_loops_records_are_handed_back_to_it(database_url: str) -> None:
    """`record` from coroutines: each awaits its own committed record in its own loop, a
    bad one fails alone, and the job is counted once."""
    engine = make_engine(database_url)
    job_id, ids = new_job(engine, 40)
    writer = LedgerWriter(get_write_engine(database_url))

    async def scenario() -> tuple[list[Record], BaseException | None]:
        good = [writer.record(answered(job_id, pid, "ok")) for pid in ids]
        bad = writer.record(answered(job_id, 10**9, "no such prompt"))
        results = list(await asyncio.gather(*good))
        try:
            await bad
        except Exception as exc:
            return results, exc
        return results, None

    results, error = asyncio.run(scenario())
    writer.close()
    assert [r.prompt_id for r in results] == ids and all(r.finished for r in results)
    assert sum(r.job_finished for r in results) == 1 and error is not None
    assert job_row(engine, job_id).completed == 40
