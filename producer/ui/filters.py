"""The answers browser's filters: each one a query parameter, a form control and a SQL
condition on `prompts`.

Adding a filter is one entry in FILTERS. A filter whose column does not exist (yet) is left
out of the form and refuses its parameter with a clear message: `judge_score` and
`reject_reason` are declared here for the reducer's per-row judgements, and appear as soon
as `prompts` has those columns (their values are listed too, in EXTRA_COLUMNS)."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement

from models.tables import PROMPTS, PromptStatus
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


def _column(name: str) -> Any:
    return PROMPTS.c[name]


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
    Filter(
        "min_score",
        "judge score \u2265",
        "number",
        lambda v: _column("judge_score") >= _number("min_score", v),
        column="judge_score",
    ),
    Filter(
        "reason",
        "rejected for",
        "text",
        lambda v: _column("reject_reason") == v,
        column="reject_reason",
    ),
    Filter("q", "text", "text", lambda v: text_search(v)),
)
BY_NAME = {f.name: f for f in FILTERS}
# Columns shown in the listing when they exist: the judge's score and the reducer's reason.
EXTRA_COLUMNS = tuple(name for name in ("judge_score", "reject_reason") if name in PROMPTS.c)
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
    return [_column(name) for name in EXTRA_COLUMNS]
