"""Train the classifier router from a finished route job's own outcomes.

Each prompt of the job is labelled by what happened to it:

    escalated for low confidence                        hard (1.0): its routed tier was
                                                        not enough
    answered by a tier below the last, no fallback      easy (0.0): a cheap tier was
                                                        sure of its answer
    answered by the last tier without a fallback        skipped (answered_by_last_tier)
    fell back only after errors, timeouts or 429s       skipped (fell_back_on_failure)
    no answer (failed or cancelled), no escalation      skipped (no_answer)
    final tier not among the job's tiers                skipped (unknown_tier)

Why prompts routed straight to the last tier are skipped, whatever their confidence: the
router sent them there, so nothing tested whether a cheaper tier would have done. Calling
them hard would teach the router its own past choices back; a low frontier confidence
says the prompt is hard for every tier, not that the frontier was needed, and there is no
tier beyond the last to send it to anyway. An escalation or a confident cheap answer is
evidence the router did not already assume.

"Last" is the last of the tiers the job was routed over (frozen in its params at submit).
A labelled file (the `router train` format) can be mixed in, e.g. to supply the level a
job lacks. Splitting, fitting, scoring and saving are `training`'s own, so a router from
history is the same kind of file, measured the same way, as one from a labelled file.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import Job, JobMode, JobStatus, Prompt, PromptStatus
from models.queries import stream_prompts
from models.training_data import low_confidence_prompt_ids
from workers.routers.base import RouterError
from workers.routers.classifier import HARDEST_STEP
from workers.routers.features import DEFAULT_FEATURES
from workers.routers.labeled import load_labeled
from workers.routers.training import (
    TrainReport,
    _fit,
    _report,
    _split,
    choose_thresholds,
    save_with_thresholds,
    with_choice,
)
from workers.routing import last_user_text

HARD, EASY = 1.0, 0.0


class Skip(StrEnum):
    """Why a prompt carries no label."""

    LAST_TIER = "answered_by_last_tier"
    FAILURE = "fell_back_on_failure"
    NO_ANSWER = "no_answer"
    UNKNOWN_TIER = "unknown_tier"


@dataclass
class JobLabels:
    job_id: int
    texts: list[str] = field(default_factory=list)
    difficulties: list[float] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def hard(self) -> int:
        return self.difficulties.count(HARD)

    @property
    def easy(self) -> int:
        return self.difficulties.count(EASY)


@dataclass
class HistoryTrainReport(TrainReport):
    """TrainReport plus where the rows came from."""

    job_id: int = 0
    job_hard: int = 0  # prompts of the job labelled hard (escalated for low confidence)
    job_easy: int = 0  # ... easy (answered confidently below the last tier)
    job_skipped: dict[str, int] = field(default_factory=dict)  # unlabelled, by reason
    labeled_rows: int = 0  # rows from the labelled file, if one was given

    def sources(self) -> str:
        """Where the rows came from, in one line for people."""
        skipped = ", ".join(f"{count} {reason}" for reason, count in self.job_skipped.items())
        line = (
            f"job {self.job_id}: {self.job_hard} hard, {self.job_easy} easy "
            f"(skipped: {skipped or 'none'})"
        )
        return line + (f"; {self.labeled_rows} labelled rows" if self.labeled_rows else "")


def train_from_job(
    job_id: int,
    *,
    engine: Engine,
    out: Path,
    labeled: Path | None = None,
    tiers: Sequence[str],
    test_fraction: float = 0.2,
    seed: int = 0,
    features: Sequence[str] = DEFAULT_FEATURES,
    frontier_share: float | None = None,
    thresholds: Sequence[float] | None = None,
) -> HistoryTrainReport:
    """Label job `job_id`'s prompts by their outcomes (plus `labeled`'s rows), fit on a
    seeded split, measure on the rest, save to `out`. `tiers`: the configured tier names,
    for a labelled file's tier-name labels and for jobs that predate frozen tiers."""
    if not 0 < test_fraction < 1:
        raise RouterError(f"test fraction must be between 0 and 1, got {test_fraction}")
    job_labels = label_job(engine, job_id, default_tiers=tiers)
    texts, difficulties = list(job_labels.texts), list(job_labels.difficulties)
    if labeled is not None:
        more_texts, more_difficulties = load_labeled(Path(labeled), tiers=tiers)
        texts += more_texts
        difficulties += more_difficulties
    steps = [round(d * HARDEST_STEP) for d in difficulties]
    _require_two_levels(job_labels, steps, labeled)
    source = _source_name(job_id, labeled)
    choice = TrainingChoice(features, frontier_share, thresholds, tiers)
    return _train(texts, steps, Path(out), source, job_labels, test_fraction, seed, choice)


def label_job(engine: Engine, job_id: int, *, default_tiers: Sequence[str]) -> JobLabels:
    """Every prompt of the job with a label, and the count of those without one."""
    labels = JobLabels(job_id)
    with Session(engine) as session:
        job = _route_job(session, job_id)
        tiers = list(job.params.get("tiers") or default_tiers)
        escalated = low_confidence_prompt_ids(session=session, job_id=job_id)
        for prompt in stream_prompts(session=session, job_id=job_id):
            outcome = prompt_label(prompt, tiers, escalated=prompt.id in escalated)
            if isinstance(outcome, Skip):
                labels.skipped[outcome] += 1
                continue
            labels.texts.append(last_user_text(prompt.messages))
            labels.difficulties.append(outcome)
    return labels


def prompt_label(prompt: Prompt, tiers: Sequence[str], *, escalated: bool) -> float | Skip:
    """The difficulty the prompt's outcome shows, or why it shows none (module docstring)."""
    if escalated:
        return HARD
    if prompt.status != PromptStatus.SUCCEEDED:
        return Skip.NO_ANSWER
    if prompt.fell_back:
        return Skip.FAILURE
    if prompt.final_tier not in tiers:
        return Skip.UNKNOWN_TIER
    if prompt.final_tier == tiers[-1]:
        return Skip.LAST_TIER
    return EASY


def _route_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise RouterError(f"job {job_id} not found (list jobs with: distillery jobs)")
    if job.mode != JobMode.ROUTE:
        raise RouterError(
            f"job {job_id} is a {job.mode} job; training from history needs a route job, "
            f"whose prompts went to different tiers"
        )
    if job.status == JobStatus.RUNNING:
        raise RouterError(
            f"job {job_id} is still running ({job.done}/{job.total} prompts done); "
            f"wait for it: distillery status {job_id} --watch"
        )
    return job


def _require_two_levels(labels: JobLabels, steps: list[int], labeled: Path | None) -> None:
    if len(set(steps)) >= 2:
        return
    skipped = ", ".join(f"{count} {reason}" for reason, count in labels.skipped.items())
    sources = f"job {labels.job_id} and {labeled} give" if labeled else f"job {labels.job_id} gives"
    raise RouterError(
        f"{sources} only one difficulty level: {labels.hard} hard "
        f"and {labels.easy} easy prompts from the job (skipped: {skipped or 'none'}); a "
        f"router needs both. Add a labelled file (distillery router train LABELED "
        f"--from-job {labels.job_id}), or learn from a job routed with --router random, "
        f"where cheap tiers meet hard prompts too"
    )


def _source_name(job_id: int, labeled: Path | None) -> str:
    return f"job {job_id}" + (f" + {Path(labeled).name}" if labeled else "")


def _train(
    texts: list[str],
    steps: list[int],
    out: Path,
    source: str,
    labels: JobLabels,
    test_fraction: float,
    seed: int,
    choice: "TrainingChoice",
) -> HistoryTrainReport:
    # training's helpers take a path only to name the data in their messages
    split = _split(Path(source), texts, steps, test_fraction, seed)
    kind = "binary" if len(set(steps)) == 2 else "levels"
    try:
        model = _fit(split, kind=kind, trained_on=source, rows=len(texts), features=choice.features)
    except ValueError as exc:  # e.g. prompts with no words in them: nothing to learn from
        raise RouterError(f"{source}: cannot train on these prompts: {exc}") from None
    thresholds = choose_thresholds(model, split, choice.frontier_share, choice.thresholds)
    save_with_thresholds(out, model, thresholds, choice.tiers)
    report = _report(model, split, out, rows=len(texts), positive=steps.count(HARDEST_STEP))
    report = with_choice(report, thresholds)
    return _with_sources(report, labels, labeled_rows=len(texts) - len(labels.texts))


@dataclass(frozen=True)
class TrainingChoice:
    """What `router train` was asked for, beyond the rows."""

    features: Sequence[str]
    frontier_share: float | None
    thresholds: Sequence[float] | None
    tiers: Sequence[str]


def _with_sources(
    report: TrainReport, labels: JobLabels, *, labeled_rows: int
) -> HistoryTrainReport:
    fields: dict[str, Any] = vars(report)
    return HistoryTrainReport(
        **fields,
        job_id=labels.job_id,
        job_hard=labels.hard,
        job_easy=labels.easy,
        job_skipped=dict(labels.skipped),
        labeled_rows=labeled_rows,
    )
