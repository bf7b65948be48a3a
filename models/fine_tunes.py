"""The `fine_tunes` rows: a run created at submit, then moved along by whoever trains it
(the local backend in a worker or in process, or `finetune status` for a provider's job).
Every move is a conditional UPDATE on the status it expects, so a cancelled run is never
marked running again, and a finished one is never re-finished."""

from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from models.tables import TERMINAL_FINE_TUNE_STATUSES, FineTune, FineTuneStatus
from models.types import utcnow


def create_fine_tune(*, session: Session, **values: Any) -> FineTune:
    row = FineTune(**values)
    session.add(row)
    session.flush()
    return row


def get_fine_tune(*, session: Session, fine_tune_id: int) -> FineTune | None:
    return session.get(FineTune, fine_tune_id)


def fine_tune_by_provider_id(*, session: Session, provider_job_id: str) -> FineTune | None:
    query = select(FineTune).where(col(FineTune.provider_job_id) == provider_job_id)
    return session.exec(query.order_by(col(FineTune.id).desc())).first()


def recent_fine_tunes(*, session: Session, limit: int = 20) -> list[FineTune]:
    query = select(FineTune).order_by(col(FineTune.id).desc()).limit(limit)
    return list(session.exec(query))


def move(
    *,
    session: Session,
    fine_tune_id: int,
    to: FineTuneStatus,
    expected: Iterable[FineTuneStatus],
    **values: Any,
) -> bool:
    """Set the status (and VALUES) if the row is in one of EXPECTED; whether it was."""
    if to in TERMINAL_FINE_TUNE_STATUSES:
        values.setdefault("finished_at", utcnow())
    if to == FineTuneStatus.RUNNING:
        values.setdefault("started_at", utcnow())
    statement = (
        update(FineTune)
        .where(col(FineTune.id) == fine_tune_id, col(FineTune.status).in_(list(expected)))
        .values(status=to, **values)
    )
    return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]


def record_step(
    *, session: Session, fine_tune_id: int, steps_done: int, steps_total: int, curve: list[Any]
) -> FineTuneStatus | None:
    """A logged step's progress and the whole loss curve so far; the row's status now (a
    run reads CANCELLED here and stops)."""
    session.execute(
        update(FineTune)
        .where(col(FineTune.id) == fine_tune_id)
        .values(steps_done=steps_done, steps_total=steps_total, loss_curve=curve)
    )
    row = session.get(FineTune, fine_tune_id, populate_existing=True)
    return None if row is None else row.status


def set_values(*, session: Session, fine_tune_id: int, **values: Any) -> None:
    session.execute(update(FineTune).where(col(FineTune.id) == fine_tune_id).values(**values))
