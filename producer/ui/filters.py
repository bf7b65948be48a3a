"""The answers browser's filters: each one a query parameter, a form control and a SQL
condition on `prompts`.

Adding a filter is one entry in FILTERS. A filter whose column does not exist (yet) is left
out of the form and refuses its parameter with a clear message. The judge's score and the
reducer's rejection reason live in their own tables (`judgements`, `rejections`): a prompt's
are those of its job's newest judge run and newest training file, the same ones `results
--rejected` and `report` show, and the listing shows them as two more columns."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select

from models.tables import (
    JUDGE_RUNS,
    JUDGEMENTS,
    PROMPTS,
    REJECTIONS,
    TRAINING_FILES,
    PromptStatus,
)
from models.ui_queries import text_search


class BadFilter(ValueError):
    """A query parameter the browser cannot use; the message says which and why."""


@dataclass(frozen=True)
class Filter:
    name: str  # the query parameter
    label: str
    kind: str  # "choice" (a select), "text" or "number" (an input)
    condition: Callable[[str], ColumnElement[bool]]
    column: str | None = None  # the prompts column it needs; None: always available
    # A choice's values (value, label); None for a choice: the configured tiers.
    choices: tuple[tuple[str, str], ...] | None = None

    @property
    def available(self) -> bool:
        return self.column is None or self.column in PROMPTS.c


def _status(value: str) -> ColumnElement[bool]:
    try:
        return PROMPTS.c.status == PromptStatus(value)
    except ValueError:
        raise BadFilter(
            f"status must be one of {', '.join(s.value for s in PromptStatus)}, not {value!r}"
        ) from None


def _yes_no(value: str) -> bool:
    if value not in ("yes", "no"):
        raise BadFilter(f"fell_back must be yes or no, not {value!r}")
    return value == "yes"


def _number(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise BadFilter(f"{name} must be a number, not {value!r}") from None


def _newest_judge_run() -> Any:
    newest = func.max(JUDGE_RUNS.c.id)
    return select(newest).where(JUDGE_RUNS.c.job_id == PROMPTS.c.job_id).scalar_subquery()


def _newest_training_file() -> Any:
    newest = func.max(TRAINING_FILES.c.id)
    return select(newest).where(TRAINING_FILES.c.job_id == PROMPTS.c.job_id).scalar_subquery()


def _judged() -> tuple[ColumnElement[bool], ...]:
    """A judgement of this prompt from its job's newest judge run."""
    return (
        JUDGEMENTS.c.prompt_id == PROMPTS.c.id,
        JUDGEMENTS.c.judge_run_id == _newest_judge_run(),
    )


def _min_score(value: str) -> ColumnElement[bool]:
    minimum = _number("min_score", value)
    return exists().where(*_judged(), JUDGEMENTS.c.score >= minimum)


def _rejected_for(value: str) -> ColumnElement[bool]:
    return exists().where(
        REJECTIONS.c.prompt_id == PROMPTS.c.id,
        REJECTIONS.c.training_file_id == _newest_training_file(),
        REJECTIONS.c.reason == value,
    )


def judge_score_column() -> Any:
    """The prompt's score from its job's newest judge run (None: not judged, or unscored)."""
    return select(JUDGEMENTS.c.score).where(*_judged()).scalar_subquery().label("judge_score")


def reject_reason_column() -> Any:
    """Why the job's newest training file left the prompt out (None: kept, or not reduced)."""
    query = select(REJECTIONS.c.reason).where(
        REJECTIONS.c.prompt_id == PROMPTS.c.id,
        REJECTIONS.c.training_file_id == _newest_training_file(),
    )
    return query.limit(1).scalar_subquery().label("reject_reason")


YES_NO = (("yes", "yes"), ("no", "no"))
FILTERS: tuple[Filter, ...] = (
    Filter(
        "status",
        "status",
        "choice",
        _status,
        choices=tuple((s.value, s.value) for s in PromptStatus),
    ),
    Filter("routed", "routed tier", "choice", lambda v: PROMPTS.c.routed_tier == v, choices=None),
    Filter("tier", "final tier", "choice", lambda v: PROMPTS.c.final_tier == v, choices=None),
    Filter(
        "fell_back",
        "fell back",
        "choice",
        lambda v: PROMPTS.c.fell_back.is_(_yes_no(v)),
        choices=YES_NO,
    ),
    Filter("min_score", "judge score \u2265", "number", _min_score),
    Filter("reason", "rejected for", "text", _rejected_for),
    Filter("q", "text", "text", lambda v: text_search(v)),
)
BY_NAME = {f.name: f for f in FILTERS}
MAX_TEXT = 200


def available_filters() -> list[Filter]:
    return [f for f in FILTERS if f.available]


def conditions(params: Mapping[str, str]) -> tuple[dict[str, str], list[ColumnElement[bool]]]:
    """The filters set in `params` (empty values ignored) and their SQL conditions; raises
    BadFilter naming the parameter that cannot be used."""
    chosen: dict[str, str] = {}
    where: list[ColumnElement[bool]] = []
    for name, value in params.items():
        value = value.strip()
        spec = BY_NAME.get(name)
        if spec is None or not value:
            continue
        if not spec.available:
            raise BadFilter(f"{name}: this database has no {spec.column} column yet")
        if len(value) > MAX_TEXT:
            raise BadFilter(f"{name}: at most {MAX_TEXT} characters")
        where.append(spec.condition(value))
        chosen[name] = value
    return chosen, where


def extra_columns() -> list[Any]:
    """Columns the listing shows beside the prompts' own: the judge's score and the reason
    a reduction left the prompt out."""
    return [judge_score_column(), reject_reason_column()]
