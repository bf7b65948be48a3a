"""What each dashboard page shows: plain functions from the database to a template's context
(run in a thread by `producer.ui.app`). The numbers come from the same code as the CLI's:
`producer.report.build_report` for a job's routing, `models.reports` for its counts, and
`models.ui_queries` for the rest."""

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import JobMode
from models import ui_queries as q
from models.reports import attempt_count, prompt_usage
from producer.report import build_report
from producer.ui import charts
from producer.ui.cache import Entry, JobCache
from producer.ui.filters import BadFilter, available_filters, conditions, extra_columns
from workers.settings import Settings

JOBS_SHOWN = 100
PAGE_SIZE = 50
PROGRESS_POINTS = 60
TRAINING_SHOWN = 50
ROUTED_MODES = (JobMode.ROUTE, JobMode.LIVE)


class PageNotFound(LookupError):
    """No such job, prompt, file or run: the page says which."""


@dataclass(frozen=True)
class Sources:
    """What every page reads from: the database, the configuration (the tiers, in order,
    for the report), and the aggregates already computed (producer.ui.cache)."""

    engine: Engine
    settings: Settings
    cache: JobCache


# --- jobs ----------------------------------------------------------------------------------


def jobs_page(src: Sources, *, query: Mapping[str, str]) -> Any:
    with Session(src.engine) as session:
        jobs = q.job_rows(session=session, limit=JOBS_SHOWN)
    costed = [replace(job, cost_usd=_cost(src, job)) for job in jobs]
    return "jobs.html", {"jobs": costed, "refresh": True}


def _cost(src: Sources, job: q.JobRow) -> float | None:
    """The job's cost, if computed already; else None, and it is computed in the background
    (the list refreshes itself every 2 s and shows it then)."""
    compute = partial(_job_cost, src, job.id)
    entry = src.cache.peek(("cost", job.id), job.version, compute, start_if_missing=True)
    return None if entry is None else float(entry.value)


def _job_cost(src: Sources, job_id: int) -> float:
    with Session(src.engine) as session:
        return q.job_cost(session=session, job_id=job_id)


def job_page(src: Sources, *, query: Mapping[str, str], job_id: str) -> Any:
    """The job at once (its row's counters); its aggregates inline when computed already,
    else fetched by the page from `job_aggregates_page` (producer.ui.cache)."""
    with Session(src.engine) as session:
        job = _job(session, int(job_id))
        version = _version(session, job)
    entry = src.cache.peek(("job", job.id), version, partial(_job_aggregates, src, job))
    return "job.html", {"job": job, "agg": _shown(entry), "refresh": job.status == "running"}


def job_aggregates_page(src: Sources, *, query: Mapping[str, str], job_id: str) -> Any:
    with Session(src.engine) as session:
        job = _job(session, int(job_id))
        version = _version(session, job)
    entry = src.cache.get(("job", job.id), version, partial(_job_aggregates, src, job))
    return "job_aggregates_fragment.html", {"job": job, "agg": _shown(entry)}


def _version(session: Session, job: q.JobRow) -> tuple[Any, ...]:
    return (*job.version, q.newest_training_file_id(session=session, job_id=job.id))


def _shown(entry: Entry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {**entry.value, "as_of": datetime.fromtimestamp(entry.computed_at, UTC)}


def _job_aggregates(src: Sources, job: q.JobRow) -> dict[str, Any]:
    """Everything on the job page but the job row: its counts, curve, report and charts."""
    with Session(src.engine) as session:
        counts = q.status_counts(session=session, job_id=job.id)
        curve = q.progress_curve(session=session, job_id=job.id, points=PROGRESS_POINTS)
        usage = prompt_usage(session=session, job_id=job.id)
        calls = attempt_count(session=session, job_id=job.id)
        report = _report(session, src.settings, job)
        files = q.training_files(session=session, limit=TRAINING_SHOWN, job_id=job.id)
    context = {
        "counts": counts,
        "usage": usage,
        "calls": calls,
        "report": report,
        "files": files,
        "progress_chart": charts.progress_over_time(curve, job.created_at),
        "status_chart": charts.counts_bars("prompts by status", counts, unit="prompts"),
    }
    if report is not None:
        context |= {
            "distribution_chart": charts.tier_distribution(report),
            "latency_chart": charts.tier_latency(report),
            "cost_chart": charts.cost_vs_frontier(report),
            "reasons_chart": charts.counts_bars(
                "fallbacks by reason", report["fallbacks"]["by_reason"], unit="escalations"
            ),
        }
    return context


def _job(session: Session, job_id: int) -> q.JobRow:
    job = q.job_row(session=session, job_id=job_id)
    if job is None:
        raise PageNotFound(f"There is no job {job_id}.")
    return job


def _report(session: Session, settings: Settings, job: q.JobRow) -> dict[str, Any] | None:
    """`distillery report`'s data, for the jobs whose prompts are routed."""
    if job.mode not in ROUTED_MODES:
        return None
    return build_report(session, job.id, tiers=settings.tiers)


# --- answers -------------------------------------------------------------------------------


def prompts_page(src: Sources, *, query: Mapping[str, str], job_id: str) -> Any:
    chosen, where = conditions(query)
    after, before = _cursor(query, "after"), _cursor(query, "before")
    tiers = list(src.settings.tiers)  # the choices: the configured tiers, in order
    with Session(src.engine) as session:
        job = _job(session, int(job_id))
        page = q.prompt_page(
            session=session,
            job_id=job.id,
            where=where,
            after=after,
            before=before,
            limit=PAGE_SIZE,
            extra_columns=extra_columns(),
        )
    return "prompts.html", {
        "job": job,
        "page": page,
        "filters": available_filters(),
        "chosen": chosen,
        "choices": {f.name: f.choices or [(t, t) for t in tiers] for f in available_filters()},
        "extra": [c.key for c in extra_columns()],
    }


def _cursor(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise BadFilter(f"{name} must be a prompt index (a whole number), not {value!r}")
    return int(value)


def prompt_page(src: Sources, *, query: Mapping[str, str], prompt_id: str) -> Any:
    with Session(src.engine) as session:
        detail = q.prompt_detail(session=session, prompt_id=int(prompt_id))
    if detail is None:
        raise PageNotFound(f"There is no prompt {prompt_id}.")
    return "prompt.html", {"d": detail, "side_by_side": _side_by_side(detail)}


def _side_by_side(detail: q.PromptDetail) -> list[dict[str, Any]] | None:
    """The served answer and the teacher's, when the prompt has a shadow (or is one)."""
    if detail.paired is None:
        return None
    mine = {"role": _role(detail.job.mode), "prompt": detail.prompt}
    other_role = "served (live)" if str(detail.job.mode) == JobMode.SHADOW else "teacher (shadow)"
    pair = [mine, {"role": other_role, "prompt": detail.paired}]
    return sorted(pair, key=lambda side: side["role"].startswith("teacher"))


def _role(mode: Any) -> str:
    return "teacher (shadow)" if str(mode) == JobMode.SHADOW else "served (live)"


# --- training ------------------------------------------------------------------------------


def training_page(src: Sources, *, query: Mapping[str, str]) -> Any:
    with Session(src.engine) as session:
        files = q.training_files(session=session, limit=TRAINING_SHOWN)
        runs = q.fine_tunes(session=session, limit=TRAINING_SHOWN)
    rejected = [charts.counts_bars("rejected", f.rejected or {}, unit="rows") for f in files]
    return "training.html", {"files": list(zip(files, rejected, strict=True)), "runs": runs}


def fine_tune_page(src: Sources, *, query: Mapping[str, str], fine_tune_id: str) -> Any:
    with Session(src.engine) as session:
        run = q.fine_tune(session=session, fine_tune_id=int(fine_tune_id))
    if run is None:
        raise PageNotFound(f"There is no fine-tune {fine_tune_id}.")
    return "fine_tune.html", {"run": run, "loss_chart": charts.loss_curve(run.loss_curve or [])}


def training_file_path(engine: Engine, file_id: int, split: str) -> Path:
    with Session(engine) as session:
        record = q.training_file(session=session, file_id=file_id)
    if record is None:
        raise PageNotFound(f"There is no training file {file_id}.")
    recorded = record.path if split == "train" else record.validation_path
    if not recorded or not Path(recorded).is_file():
        raise PageNotFound(
            f"Training file {file_id} has no {split} file on disk "
            f"({recorded or 'none was written'}); run distillery reduce again to write it."
        )
    return Path(recorded)


PAGES: dict[str, Callable[..., Any]] = {
    "/jobs": jobs_page,
    "/jobs/{job_id:\\d+}": job_page,
    "/jobs/{job_id:\\d+}/aggregates": job_aggregates_page,
    "/jobs/{job_id:\\d+}/prompts": prompts_page,
    "/prompts/{prompt_id:\\d+}": prompt_page,
    "/training": training_page,
    "/fine-tunes/{fine_tune_id:\\d+}": fine_tune_page,
}


# --- formats (the templates' filters) ------------------------------------------------------


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _merge_query(chosen: Mapping[str, str], **cursor: Any) -> str:
    """The filters in force plus a page cursor, as a query string."""
    return urlencode({**chosen, **{k: str(v) for k, v in cursor.items()}})


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


FORMATS: dict[str, Callable[..., str]] = {
    "usd": _usd,
    "ms": _ms,
    "pct": _pct,
    "when": _when,
    "num": _num,
    "pretty_json": _pretty_json,
    "count": lambda n: f"{n:,}",
    "merge_query": _merge_query,
}
