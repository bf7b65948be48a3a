"""Labelled prompts for training a router: CSV or JSONL, one prompt and its difficulty per row.

Two ways to label a row (the first row decides which the file uses):

* `label`: a level — easy | medium | hard, small | medium | frontier, or a configured tier
  name (the first tier is easy, the last hard, any between medium) → 0, 0.5 or 1;
* `weak_correct` and `strong_correct` (0/1, true/false): 1.0 when the weak model was wrong
  and the strong one right — the prompt "needs the strong model", as RouteLLM labels it —
  else 0.0.

Every bad row is reported with its line number, not just the first.
"""

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from workers.routers.base import RouterError

PROMPT = "prompt"
LABEL = "label"
WEAK, STRONG = "weak_correct", "strong_correct"
LEVEL_WORDS = {"easy": 0.0, "small": 0.0, "medium": 0.5, "hard": 1.0, "frontier": 1.0}
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes"}, {"0", "false", "no"}
MAX_REPORTED_PROBLEMS = 20
CSV_FIELD_LIMIT = 16 * 1024 * 1024  # csv's default of 128K characters is below a long prompt

Record = tuple[int, dict[str, Any]]  # (first line of the record, its columns)
Labeller = Callable[[dict[str, Any]], float]


def load_labeled(path: Path, *, tiers: Sequence[str] = ()) -> tuple[list[str], list[float]]:
    """Prompts and their difficulties in [0, 1]; RouterError listing every bad line."""
    path = Path(path)
    records = list(_records(path))
    if not records:
        raise RouterError(f"{path}: no labelled rows")
    labeller = _labeller_for(path, records[0], tiers)
    texts, difficulties, problems = [], [], []
    for line, record in records:
        try:
            text, difficulty = _prompt(record), labeller(record)
        except ValueError as exc:
            problems.append(f"line {line}: {exc}")
            continue
        texts.append(text)
        difficulties.append(difficulty)
    if problems:
        raise RouterError(_problem_report(path, problems))
    return texts, difficulties


def _problem_report(path: Path, problems: list[str]) -> str:
    shown = problems[:MAX_REPORTED_PROBLEMS]
    more = len(problems) - len(shown)
    tail = [f"  ... and {more} more"] if more else []
    return "\n".join([f"{path}: {len(problems)} bad row(s)", *(f"  {p}" for p in shown), *tail])


def _labeller_for(path: Path, first: Record, tiers: Sequence[str]) -> Labeller:
    line, record = first
    if LABEL in record:
        levels = _level_words(tiers)
        return lambda row: _level(row.get(LABEL), levels)
    if WEAK in record and STRONG in record:
        return _needs_strong
    found = ", ".join(record) or "none"
    raise RouterError(
        f"{path}: line {line}: needs a '{LABEL}' column (easy|medium|hard) or both "
        f"'{WEAK}' and '{STRONG}' columns (0/1); found columns: {found}"
    )


def _level_words(tiers: Sequence[str]) -> dict[str, float]:
    """The fixed words plus the configured tier names by position, cheapest first."""
    levels = dict(LEVEL_WORDS)
    for index, tier in enumerate(tiers):
        middle = 0 < index < len(tiers) - 1
        levels[tier.lower()] = 0.5 if middle else float(index > 0)
    return levels


def _level(value: Any, levels: dict[str, float]) -> float:
    if not isinstance(value, str) or value.strip().lower() not in levels:
        expected = " | ".join(levels)
        raise ValueError(f"'{LABEL}' is {value!r}; expected one of {expected}")
    return levels[value.strip().lower()]


def _needs_strong(record: dict[str, Any]) -> float:
    weak, strong = _flag(record, WEAK), _flag(record, STRONG)
    return 1.0 if strong and not weak else 0.0


def _flag(record: dict[str, Any], column: str) -> bool:
    value = record.get(column)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"'{column}' is {value!r}; expected 0/1 or true/false")


def _prompt(record: dict[str, Any]) -> str:
    value = record.get(PROMPT)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{PROMPT}' is missing or empty")
    return value


def _records(path: Path) -> Iterator[Record]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader: Callable[[Iterator[str], Path], Iterator[Record]] = _csv_records
    elif suffix in (".jsonl", ".ndjson", ".json"):
        reader = _json_records
    else:
        raise RouterError(f"{path}: unsupported file type {suffix or '(none)'}; use .csv or .jsonl")
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            yield from reader(stream, path)
    except FileNotFoundError:
        raise RouterError(f"{path}: labelled file not found") from None
    except UnicodeDecodeError as exc:
        raise RouterError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _csv_records(lines: Iterator[str], path: Path) -> Iterator[Record]:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1  # a quoted prompt may span lines: report where it starts
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise RouterError(f"{path}: line {start}: not valid CSV ({exc})") from None
        if not row or not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [name.strip() for name in row]
            continue
        yield start, _csv_record(header, row, start, path)


def _csv_record(header: list[str], row: list[str], line: int, path: Path) -> dict[str, Any]:
    if len(row) != len(header):
        raise RouterError(
            f"{path}: line {line}: {len(row)} values, but the header has {len(header)} columns"
        )
    return dict(zip(header, row, strict=True))


def _json_records(lines: Iterator[str], path: Path) -> Iterator[Record]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RouterError(f"{path}: line {number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise RouterError(f"{path}: line {number}: expected a JSON object")
        yield number, record
