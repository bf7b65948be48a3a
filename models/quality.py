"""What the training-data quality work reads and writes: the reducer's rejections (one row
per example left out, with the row it duplicates), and the judge's runs and scores."""

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from models.tables import (
    JUDGEMENTS,
    REJECTIONS,
    Judgement,
    JudgeRun,
    Prompt,
    Rejection,
    TrainingFile,
)

INSERT_CHUNK = 5000


def record_rejections(
    *,
    session: Session,
    training_file_id: int,
    rows: Sequence[tuple[int, str, int | None, int | None]],
) -> None:
    """(prompt id, reason, duplicate_of, score) per row left out, in chunks."""
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = [
            {
                "training_file_id": training_file_id,
                "prompt_id": prompt_id,
                "reason": reason,
                "duplicate_of": duplicate_of,
                "score": score,
            }
            for prompt_id, reason, duplicate_of, score in rows[start : start + INSERT_CHUNK]
        ]
        session.execute(insert(REJECTIONS), chunk)


def newest_training_file(*, session: Session, job_id: int) -> TrainingFile | None:
    query = select(TrainingFile).where(col(TrainingFile.job_id) == job_id)
    return session.scalars(query.order_by(col(TrainingFile.id).desc()).limit(1)).first()


def rejected_rows(
    *, session: Session, training_file_id: int, reason: str | None = None
) -> Iterator[dict[str, Any]]:
    """The rows a reduction left out, in input order, each with the prompt and answer and,
    for a duplicate, the idx, prompt and answer of the row it repeats."""
    kept = aliased(Prompt)
    query = (
        select(Rejection, Prompt, kept)
        .join(Prompt, col(Prompt.id) == col(Rejection.prompt_id))
        .outerjoin(kept, col(kept.id) == col(Rejection.duplicate_of))
        .where(col(Rejection.training_file_id) == training_file_id)
        .order_by(col(Prompt.job_id), col(Prompt.idx))
        .execution_options(yield_per=1000)
    )
    if reason:
        query = query.where(col(Rejection.reason) == reason)
    for rejection, prompt, original in session.execute(query):
        yield {
            "idx": prompt.idx,
            "job_id": prompt.job_id,
            "custom_id": prompt.custom_id,
            "reason": rejection.reason,
            "duplicate_of": original.idx if original is not None else None,
            "duplicate_of_job_id": original.job_id if original is not None else None,
            "score": rejection.score,
            "finish_reason": prompt.finish_reason,
            "messages": prompt.messages,
            "response": prompt.response,
            "duplicate_response": original.response if original is not None else None,
        }


def latest_judge_run(*, session: Session, job_id: int) -> JudgeRun | None:
    query = select(JudgeRun).where(col(JudgeRun.job_id) == job_id)
    return session.scalars(query.order_by(col(JudgeRun.id).desc()).limit(1)).first()


def latest_scores(*, session: Session, job_id: int) -> dict[int, int | None] | None:
    """prompt id: score (None: unscored) of the job's newest judge run; None if never judged."""
    run = latest_judge_run(session=session, job_id=job_id)
    if run is None:
        return None
    query = select(col(Judgement.prompt_id), col(Judgement.score)).where(
        col(Judgement.judge_run_id) == run.id
    )
    return {prompt_id: score for prompt_id, score in session.execute(query)}


def judged_prompt_ids(*, session: Session, judge_run_id: int, prompt_ids: list[int]) -> set[int]:
    query = select(col(Judgement.prompt_id)).where(
        col(Judgement.judge_run_id) == judge_run_id, col(Judgement.prompt_id).in_(prompt_ids)
    )
    return set(session.execute(query).scalars())


def judged_count(*, session: Session, judge_run_id: int) -> tuple[int, int]:
    """(answers judged so far, of them unscored)."""
    rows = session.execute(
        select(col(Judgement.score)).where(col(Judgement.judge_run_id) == judge_run_id)
    ).scalars()
    scores = list(rows)
    return len(scores), sum(1 for s in scores if s is None)


def record_judgements(*, session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(JUDGEMENTS), list(rows))
