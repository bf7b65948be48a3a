"""Training the classifier router from a route job's own outcomes: a real route job (worker
processes per tier, the simulator's known confidences) labels its prompts, the router file
loads and ranks hard prompts above easy ones; and the labelling rules on hand-made rows."""

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlmodel import Session

from models import Fallback, FallbackReason, Job, JobMode, JobStatus, Prompt, PromptStatus
from simulator import RunningSimulator
from tests.helpers.config import TIERS
from tests.helpers.pipeline import prompts_of, submit_file, wait_for_job, write_jsonl
from tests.helpers.routing import route_config, start_tier_workers
from tests.helpers.services import make_engine
from workers.routers import RouterError, make_router
from workers.routers.history import HistoryTrainReport, Skip, train_from_job

COPIES = 6
# (prompt, the rules router's tier, the final tier, the label the outcome gives)
CASES = [
    ("[easy] What is the capital of France?", "small", "small", "easy"),
    ("[hard] What is the integral of x^x?", "small", "frontier", "hard"),
    ("[easy] Write a python function that reverses a list.", "frontier", "frontier", None),
    (
        "[hard] Compare the trade-offs of microservices and monoliths for a bank.",
        "medium",
        "frontier",
        "hard",
    ),
    ("[easy] Compare the trade-offs of tea and coffee for breakfast.", "medium", "medium", "easy"),
]


def run_route_job(
    tmp_path: Path, sim: RunningSimulator, database_url: str, workers: Any
) -> dict[str, Any]:
    """A rules-routed job over CASES, run by one worker process per tier."""
    config = route_config(tmp_path, sim, database_url)
    start_tier_workers(workers, config)
    rows = [
        {"prompt": f"{text} (case {copy})", "custom_id": f"c{n}-{copy}"}
        for n, (text, _, _, _) in enumerate(CASES)
        for copy in range(COPIES)
    ]
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    job_id, engine, settings = submit_file(path, config, mode=JobMode.ROUTE, router="rules")
    job = wait_for_job(engine, job_id, workers)
    assert job.status == JobStatus.FINISHED and job.completed == len(rows)
    return {"job_id": job_id, "engine": engine, "settings": settings, "tmp": tmp_path}


def expected_labels() -> Counter[str | None]:
    return Counter(label for _, _, _, label in CASES for _ in range(COPIES))


def test_router_trained_from_a_route_job(
    tmp_path: Path, tiered_sim: RunningSimulator, database_url: str, workers: Any
) -> None:
    finished = run_route_job(tmp_path, tiered_sim, database_url, workers)
    job_id, engine = finished["job_id"], finished["engine"]
    outcomes = [(p.routed_tier, p.final_tier) for p in prompts_of(engine, job_id)]
    assert outcomes == [(routed, final) for _, routed, final, _ in CASES for _ in range(COPIES)]

    out = tmp_path / "router.joblib"
    report = train_from_job(job_id, engine=engine, out=out, tiers=TIERS, test_fraction=0.25, seed=0)
    labels = expected_labels()
    assert (report.job_hard, report.job_easy) == (labels["hard"], labels["easy"]) == (12, 12)
    assert report.job_skipped == {Skip.LAST_TIER: labels[None]} == {Skip.LAST_TIER: 6}
    assert (report.rows, report.labeled_rows) == (24, 0)
    assert (report.train_rows, report.test_rows) == (18, 6)
    assert report.kind == "binary" and report.positive_rate == 0.5
    assert report.held_out_auc is not None and 0 <= report.held_out_accuracy <= 1
    assert report.path == str(out)

    router = make_router("classifier", settings=finished["settings"], classifier_path=out)
    hard = router.decide_now("[hard] Compare the trade-offs of two databases for a shop.")
    easy = router.decide_now("[easy] What is the capital of Spain?")
    assert hard.score is not None and easy.score is not None and hard.score > easy.score
    check_mixed_with_a_labelled_file(job_id, engine, tmp_path)


def check_mixed_with_a_labelled_file(job_id: int, engine: Any, tmp_path: Path) -> None:
    labelled = write_jsonl(
        tmp_path / "labelled.jsonl",
        [{"prompt": f"Summarise chapter {n} of the report.", "label": "medium"} for n in range(8)],
    )
    report = train_from_job(
        job_id,
        engine=engine,
        out=tmp_path / "mixed.joblib",
        labeled=labelled,
        tiers=TIERS,
        test_fraction=0.25,
        seed=0,
    )
    assert (report.rows, report.labeled_rows, report.job_hard, report.job_easy) == (32, 8, 12, 12)
    assert report.kind == "levels" and report.train_rows + report.test_rows == 32


def router_train_takes_from_job() -> bool:
    from producer.cli.router import router_train

    return any(param.name == "from_job" for param in router_train.params)


@pytest.mark.skipif(
    not router_train_takes_from_job(), reason="`router train --from-job` is not wired in yet"
)
def test_router_train_from_job_cli(
    tmp_path: Path,
    tiered_sim: RunningSimulator,
    sqlite_url: str,
    workers: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from producer.cli import main
    from workers.settings import get_settings

    finished = run_route_job(tmp_path, tiered_sim, sqlite_url, workers)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    out = tmp_path / "cli.joblib"
    arguments = ["router", "train", "--from-job", str(finished["job_id"])]
    result = CliRunner().invoke(main, [*arguments, "--out", str(out), "--json"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["job_hard"], report["job_easy"], report["rows"]) == (12, 12, 24)
    assert out.exists()


# --- the labelling rules, on hand-made rows ---------------------------------------------


@pytest.fixture
def engine(sqlite_url: str) -> Any:
    return make_engine(sqlite_url)


def add_job(
    engine: Any, status: JobStatus = JobStatus.FINISHED, mode: JobMode = JobMode.ROUTE
) -> int:
    with Session(engine) as session:
        job = Job(mode=mode, status=status, params={"tiers": list(TIERS)})
        session.add(job)
        session.commit()
        assert job.id is not None
        return job.id


def add_prompt(
    engine: Any,
    job_id: int,
    text: str,
    *,
    final: str | None,
    status: PromptStatus = PromptStatus.SUCCEEDED,
    fallback: FallbackReason | None = None,
) -> None:
    with Session(engine) as session:
        idx = len(prompts_of(engine, job_id))
        prompt = Prompt(
            job_id=job_id,
            idx=idx,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": text},
            ],
            status=status,
            routed_tier="small",
            final_tier=final,
            fell_back=fallback is not None,
        )
        session.add(prompt)
        session.flush()
        assert prompt.id is not None
        if fallback is not None:
            session.add(
                Fallback(
                    job_id=job_id,
                    prompt_id=prompt.id,
                    from_tier="small",
                    to_tier="frontier",
                    reason=fallback,
                )
            )
        session.commit()


def test_labelling_rules(engine: Any, tmp_path: Path) -> None:
    job_id = add_job(engine)
    for n in range(4):
        add_prompt(
            engine,
            job_id,
            f"prove theorem {n}",
            final="frontier",
            fallback=FallbackReason.LOW_CONFIDENCE,
        )
        add_prompt(engine, job_id, f"say hello {n}", final="small")
    add_prompt(
        engine,
        job_id,
        "escalated, then failed",
        final="frontier",
        status=PromptStatus.FAILED,
        fallback=FallbackReason.LOW_CONFIDENCE,
    )
    add_prompt(engine, job_id, "small errored", final="frontier", fallback=FallbackReason.ERROR)
    add_prompt(engine, job_id, "never answered", final="small", status=PromptStatus.FAILED)
    add_prompt(engine, job_id, "cancelled", final=None, status=PromptStatus.CANCELLED)
    add_prompt(engine, job_id, "a tier since removed", final="nano")
    report = train_from_job(
        job_id, engine=engine, out=tmp_path / "r.joblib", tiers=TIERS, test_fraction=0.3
    )
    assert isinstance(report, HistoryTrainReport)
    assert (report.job_hard, report.job_easy) == (5, 4)
    assert report.job_skipped == {Skip.FAILURE: 1, Skip.NO_ANSWER: 2, Skip.UNKNOWN_TIER: 1}


def test_jobs_that_cannot_teach_a_router(engine: Any, tmp_path: Path) -> None:
    out = tmp_path / "r.joblib"
    running, teacher = add_job(engine, JobStatus.RUNNING), add_job(engine, mode=JobMode.TEACHER)
    only_easy = add_job(engine)
    for n in range(5):
        add_prompt(engine, only_easy, f"hello {n}", final="small")
    add_prompt(engine, only_easy, "frontier job", final="frontier")
    cases = [
        (999, "job 999 not found"),
        (running, "still running"),
        (teacher, "is a teacher job"),
        (only_easy, "0 hard and 5 easy prompts from the job (skipped: 1 answered_by_last_tier)"),
    ]
    for job_id, message in cases:
        with pytest.raises(RouterError, match=message.replace("(", r"\(").replace(")", r"\)")):
            train_from_job(job_id, engine=engine, out=out, tiers=TIERS)
    assert not out.exists()
