"""`distillery judge JOB --tier T [--rubric FILE] [--wait]`: start a judge run over a job's
answered prompts, send its batches to the judge tier's queue (workers.judge does the
calls), and with --wait follow it to the end and summarise the scores."""

import hashlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from models import Prompt, PromptStatus, session_scope
from models.quality import judged_count
from models.tables import Judgement, JudgeRun
from producer.errors import UserError
from producer.jobs import _worker_context
from producer.progress import progress_bar
from producer.status import get_job
from workers.errors import BadInput, ExitCode
from workers.judge import DEFAULT_RUBRIC
from workers.settings import Settings
from workers.task_names import JUDGE_TASK

POLL_S = 0.5


def read_rubric(path: Path | None) -> str:
    """The rubric's text: the file's, or the default one. A missing or empty file is an
    error that says what to do, before anything is sent."""
    if path is None:
        return DEFAULT_RUBRIC
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(
            f"rubric file {path} not found; give an existing file, or leave out --rubric "
            "for the default rubric"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read rubric file {path}: {exc}") from None
    if not text.strip():
        raise BadInput(
            f"rubric file {path} is empty; write what a good answer is (a few lines), or "
            "leave out --rubric for the default rubric"
        )
    return text


def answered_prompt_ids(session: Session, job_id: int) -> list[int]:
    query = (
        select(col(Prompt.id))
        .where(col(Prompt.job_id) == job_id, col(Prompt.status) == PromptStatus.SUCCEEDED)
        .order_by(col(Prompt.idx))
    )
    return list(session.execute(query).scalars())


def start_run(
    engine: Engine, settings: Settings, job_id: int, tier_name: str, rubric: str
) -> tuple[JudgeRun, list[int]]:
    tier = settings.require_tier(tier_name, "--tier")
    with session_scope(engine) as session:
        get_job(session, job_id)
        prompt_ids = answered_prompt_ids(session, job_id)
        if not prompt_ids:
            raise UserError(f"job {job_id} has no answers to judge", ExitCode.BAD_INPUT)
        sha = hashlib.sha256(rubric.encode()).hexdigest()
        run = JudgeRun(job_id=job_id, tier=tier.name, model=tier.model, rubric=rubric,
                       rubric_sha256=sha, total=len(prompt_ids))  # fmt: skip
        session.add(run)
        session.flush()
        session.expunge(run)
    return run, prompt_ids


def send_batches(run_id: int, prompt_ids: list[int], tier: str, batch: int) -> int:
    from kombu import Queue

    from workers.app import app

    sent = 0
    for start in range(0, len(prompt_ids), batch):
        chunk = prompt_ids[start : start + batch]
        # The queue itself, not its name: the process's app may have been built from
        # another config than the one naming this tier (a worker consumes it all the same).
        app.send_task(JUDGE_TASK, args=(run_id, chunk, tier), queue=Queue(tier))
        sent += 1
    return sent


def judge_job(
    job_id: int,
    *,
    settings: Settings,
    engine: Engine,
    tier: str,
    rubric_path: Path | None,
    wait: bool,
    console: Console | None,
) -> dict[str, Any]:
    rubric = read_rubric(rubric_path)
    if settings.redis_url is None and not wait:
        raise UserError(
            "REDIS_URL is not set, so there is no broker for separate workers.\n"
            "run embedded with --wait, or set REDIS_URL and start `distillery worker`",
            ExitCode.USAGE,
        )
    with _worker_context(settings):
        run, prompt_ids = start_run(engine, settings, job_id, tier, rubric)
        assert run.id is not None
        send_batches(run.id, prompt_ids, run.tier, settings.enqueue_batch)
        if console:
            console.print(
                f"judge run [bold]{run.id}[/]: {len(prompt_ids)} answers of job {job_id} "
                f"sent to '{run.tier}'"
            )
        if wait:
            wait_for_run(engine, run.id, run.total, console)
    return run_summary(engine, run.id)


def wait_for_run(engine: Engine, run_id: int, total: int, console: Console | None) -> None:
    def counts() -> tuple[int, int]:
        with Session(engine) as session:
            return judged_count(session=session, judge_run_id=run_id)

    if console is None:
        while counts()[0] < total:
            time.sleep(POLL_S)
        return
    with progress_bar(console) as bar:
        task = bar.add_task("judge", total=total, job_id=f"judge {run_id}", detail="")
        while True:
            done, unscored = counts()
            bar.update(task, completed=done, detail=f"{unscored} unscored" if unscored else "")
            if done >= total:
                return
            time.sleep(POLL_S)


def run_summary(engine: Engine, run_id: int) -> dict[str, Any]:
    from workers.reducer import score_distribution

    with Session(engine) as session:
        run = session.get(JudgeRun, run_id)
        assert run is not None
        rows = session.execute(
            select(col(Judgement.prompt_id), col(Judgement.score), col(Judgement.error))
            .where(col(Judgement.judge_run_id) == run_id)
        ).all()  # fmt: skip
        errors = [error for _, score, error in rows if score is None and error]
        return {
            "judge_run_id": run_id,
            "job_id": run.job_id,
            "tier": run.tier,
            "model": run.model,
            "rubric_sha256": run.rubric_sha256,
            "total": run.total,
            "judged": len(rows),
            "scores": score_distribution({pid: score for pid, score, _ in rows}),
            "first_errors": errors[:3],
        }


def print_run(out: Console, s: dict[str, Any]) -> None:
    spread = ", ".join(f"{k}: {v}" for k, v in s["scores"].items()) or "none yet"
    out.print(
        f"judge run [bold]{s['judge_run_id']}[/] of job {s['job_id']} on '{s['tier']}': "
        f"{s['judged']}/{s['total']} judged"
    )
    out.print(f"scores: {spread}")
    for error in s["first_errors"]:
        out.print(f"[yellow]unscored:[/] {error}")
    if s["judged"] == s["total"]:
        out.print(f"keep the good ones: distillery reduce {s['job_id']} --min-score 7")
