"""The dashboard's reads (`distillery ui`, `/ui` of the gateway) that `models.reports` does
not already make: the jobs list with each job's cost, a job's progress over time, one page
of a job's prompts (keyset pagination), a prompt with its calls, and the training records.

Every query is bounded by the page it fills: a page of prompts is `ORDER BY idx LIMIT n+1`
after the last idx shown, on the (job_id, idx) unique index, so page 1,000 of a 100k-prompt
job costs what page 1 does (OFFSET would read every row before it)."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, String, cast, func, select
from sqlmodel import Session, col

from models.tables import (
    ATTEMPTS,
    FALLBACKS,
    FINE_TUNES,
    JOBS,
    PROMPTS,
    TRAINING_FILES,
    JobMode,
)

# Characters of a prompt and of an answer shown in a list; the prompt's page has them whole.
SNIPPET_CHARS = 160


@dataclass(frozen=True)
class JobRow:
    """A job as the jobs list shows it."""

    id: int
    name: str | None
    mode: str
    status: str
    router: str | None
    total: int
    completed: int
    failed: int
    cancelled: int
    fell_back: int
    created_at: datetime
    finished_at: datetime | None
    cost_usd: float | None = None  # the prompts' cost so far, where it was asked for

    @property
    def version(self) -> tuple[Any, ...]:
        """What changes whenever the job's aggregates may have (producer.ui.cache)."""
        counters = (self.total, self.completed, self.failed, self.cancelled, self.fell_back)
        return (self.status, *counters, self.finished_at)

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.cancelled


def job_rows(*, session: Session, limit: int) -> list[JobRow]:
    """The newest `limit` jobs, newest first (without their cost: `job_cost`)."""
    jobs = session.execute(select(JOBS).order_by(JOBS.c.id.desc()).limit(limit)).all()
    return [_job_row(job) for job in jobs]


def job_cost(*, session: Session, job_id: int) -> float:
    """The cost of a job's prompts so far (a scan of its rows)."""
    query = select(func.coalesce(func.sum(PROMPTS.c.cost_usd), 0.0))
    return float(session.execute(query.where(PROMPTS.c.job_id == job_id)).scalar_one())


def _job_row(job: Any) -> JobRow:
    fields = {
        name: getattr(job, name) for name in JobRow.__dataclass_fields__ if name != "cost_usd"
    }
    fields["mode"], fields["status"] = str(job.mode), str(job.status)
    return JobRow(**fields)


def job_row(*, session: Session, job_id: int) -> JobRow | None:
    job = session.execute(select(JOBS).where(JOBS.c.id == job_id)).first()
    return None if job is None else _job_row(job)


def status_counts(*, session: Session, job_id: int) -> dict[str, int]:
    """Prompts per status (the (job_id, status) index answers it)."""
    query = (
        select(PROMPTS.c.status, func.count())
        .where(PROMPTS.c.job_id == job_id)
        .group_by(PROMPTS.c.status)
    )
    return {str(status): int(n) for status, n in session.execute(query)}


def progress_curve(*, session: Session, job_id: int, points: int) -> list[tuple[datetime, int]]:
    """(time, prompts finished by then) at about `points` evenly spaced counts, and the last:
    one sort in the database (a window function, on SQLite and PostgreSQL alike) and a few
    dozen rows back, whatever the job's size."""
    finished = PROMPTS.c.finished_at
    total = select(func.count()).where(PROMPTS.c.job_id == job_id, finished.is_not(None))
    count = int(session.execute(total).scalar_one())
    if not count:
        return []
    step = max(1, count // points)
    ranked = (
        select(finished.label("at"), func.row_number().over(order_by=finished).label("n"))
        .where(PROMPTS.c.job_id == job_id, finished.is_not(None))
        .subquery()
    )
    query = (
        select(ranked.c.at, ranked.c.n)
        .where((ranked.c.n % step == 0) | (ranked.c.n == 1) | (ranked.c.n == count))
        .order_by(ranked.c.n)
    )
    rows = session.execute(query).all()
    return [(_aware(at), int(n)) for at, n in rows]


def _aware(value: Any) -> datetime:
    """A window's column comes back undecorated (SQLite: as text): as UTCDateTime gives it."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --- a page of prompts ---------------------------------------------------------------------


@dataclass(frozen=True)
class PromptRow:
    id: int
    idx: int
    status: str
    routed_tier: str | None
    final_tier: str | None
    fell_back: bool
    confidence: float | None
    cost_usd: float
    latency_ms: float | None
    prompt: str
    response: str
    extra: dict[str, Any]  # columns a filter added to the listing (filters.EXTRA_COLUMNS)


@dataclass(frozen=True)
class PromptPage:
    rows: list[PromptRow]
    has_before: bool  # a page before the first row
    has_after: bool  # a page after the last row


def prompt_page(
    *,
    session: Session,
    job_id: int,
    where: Sequence[ColumnElement[bool]],
    after: int | None = None,
    before: int | None = None,
    limit: int = 50,
    extra_columns: Sequence[Any] = (),
) -> PromptPage:
    """The prompts of a job matching `where`, `limit` at a time in input order: the first
    page, the one after idx `after`, or the one before idx `before` (keyset pagination)."""
    base = [PROMPTS.c.job_id == job_id, *where]
    backwards = before is not None
    if after is not None:
        base.append(PROMPTS.c.idx > after)
    if before is not None:
        base.append(PROMPTS.c.idx < before)
    order = PROMPTS.c.idx.desc() if backwards else PROMPTS.c.idx
    query = select(*_listing_columns(), *extra_columns).where(*base).order_by(order)
    rows = list(session.execute(query.limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    listed = [_prompt_row(row, extra_columns) for row in rows]
    if backwards:
        return PromptPage(listed, has_before=more, has_after=True)
    return PromptPage(listed, has_before=after is not None, has_after=more)


def _listing_columns() -> list[Any]:
    c = PROMPTS.c
    return [
        c.id,
        c.idx,
        c.status,
        c.routed_tier,
        c.final_tier,
        c.fell_back,
        c.confidence,
        c.cost_usd,
        c.latency_ms,
        c.messages,
        func.substr(c.response, 1, SNIPPET_CHARS).label("response_start"),
    ]


def _prompt_row(row: Any, extra_columns: Sequence[Any]) -> PromptRow:
    return PromptRow(
        id=row.id,
        idx=row.idx,
        status=str(row.status),
        routed_tier=row.routed_tier,
        final_tier=row.final_tier,
        fell_back=bool(row.fell_back),
        confidence=row.confidence,
        cost_usd=float(row.cost_usd),
        latency_ms=row.latency_ms,
        prompt=_snippet(last_user_text(row.messages)),
        response=_snippet(row.response_start or ""),
        extra={column.key: getattr(row, column.key) for column in extra_columns},
    )


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """What the user asked last: the prompt as a person reads it."""
    for message in reversed(messages or []):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return _text_of(messages[-1].get("content")) if messages else ""


def _text_of(content: Any) -> str:
    if isinstance(content, list):  # content parts: the text ones, joined
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "\u2026"


def text_search(query: str) -> ColumnElement[bool]:
    """Prompts whose messages or answer contain `query`, any case (a scan of the job's
    rows; `%` and `_` in it are literal)."""
    return PROMPTS.c.response.icontains(query, autoescape=True) | cast(
        PROMPTS.c.messages, String
    ).icontains(query, autoescape=True)


# --- one prompt ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptDetail:
    prompt: Any  # the prompts row
    job: Any  # its jobs row
    attempts: list[Any]
    fallbacks: list[Any]
    paired: Any | None  # the shadow (teacher) prompt of a live one, or the live one of a shadow


def prompt_detail(*, session: Session, prompt_id: int) -> PromptDetail | None:
    prompt = session.execute(select(PROMPTS).where(PROMPTS.c.id == prompt_id)).first()
    if prompt is None:
        return None
    job = session.execute(select(JOBS).where(JOBS.c.id == prompt.job_id)).one()
    attempts = session.execute(
        select(ATTEMPTS).where(ATTEMPTS.c.prompt_id == prompt_id).order_by(ATTEMPTS.c.id)
    ).all()
    fallbacks = session.execute(
        select(FALLBACKS).where(FALLBACKS.c.prompt_id == prompt_id).order_by(FALLBACKS.c.id)
    ).all()
    return PromptDetail(prompt, job, list(attempts), list(fallbacks), _paired(session, prompt, job))


def _paired(session: Session, prompt: Any, job: Any) -> Any | None:
    """A live request and the teacher's shadow answer to it (workers.shadow links them by
    the shadow's metadata), whichever of the two `prompt` is."""
    meta = prompt.metadata or {}
    if str(job.mode) == JobMode.SHADOW and meta.get("live_prompt_id") is not None:
        live_id = int(meta["live_prompt_id"])
        return session.execute(select(PROMPTS).where(PROMPTS.c.id == live_id)).first()
    if str(job.mode) != JobMode.LIVE:
        return None
    # Only the shadow jobs' prompts are looked through (the (job_id, status) index).
    shadow_jobs = select(JOBS.c.id).where(col(JOBS.c.mode) == JobMode.SHADOW)
    query = (
        select(PROMPTS)
        .where(
            PROMPTS.c.job_id.in_(shadow_jobs),
            PROMPTS.c.metadata["live_prompt_id"].as_integer() == prompt.id,
        )
        .order_by(PROMPTS.c.id.desc())
    )
    return session.execute(query.limit(1)).first()


# --- training ------------------------------------------------------------------------------


def training_files(*, session: Session, limit: int, job_id: int | None = None) -> list[Any]:
    """The newest training files, of one job or of all."""
    query = select(TRAINING_FILES).order_by(TRAINING_FILES.c.id.desc()).limit(limit)
    if job_id is not None:
        query = query.where(TRAINING_FILES.c.job_id == job_id)
    return list(session.execute(query).all())


def newest_training_file_id(*, session: Session, job_id: int) -> int | None:
    """The job's newest training file (its index): a `distillery reduce` after the job
    finished changes the job page too."""
    query = select(func.max(TRAINING_FILES.c.id)).where(TRAINING_FILES.c.job_id == job_id)
    return session.execute(query).scalar()


def training_file(*, session: Session, file_id: int) -> Any | None:
    query = select(TRAINING_FILES).where(TRAINING_FILES.c.id == file_id)
    return session.execute(query).first()


def fine_tunes(*, session: Session, limit: int) -> list[Any]:
    query = select(FINE_TUNES).order_by(FINE_TUNES.c.id.desc()).limit(limit)
    return list(session.execute(query).all())


def fine_tune(*, session: Session, fine_tune_id: int) -> Any | None:
    query = select(FINE_TUNES).where(FINE_TUNES.c.id == fine_tune_id)
    return session.execute(query).first()
