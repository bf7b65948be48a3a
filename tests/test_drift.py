"""Drift watch in `report`: a classifier job whose last-tier share moved more than the margin
from the share its router file was calibrated for is flagged with the command that re-fits
it; within the margin it is reported as such; other routers and uncalibrated files say nothing."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
from rich.console import Console
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import Job, JobMode, JobStatus, Prompt, PromptStatus, session_scope
from producer.report import build_report, print_report
from tests.helpers.services import make_engine
from tests.test_report import TIERS
from workers.routers.drift import tier_drift


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    db = make_engine(database_url)
    yield db
    db.dispose()


def classifier_file(tmp_path: Path, share: float | None) -> Path:
    path = tmp_path / "router.joblib"
    data: dict[str, Any] = {"version": 1, "pipeline": None}
    if share is not None:
        data["calibration"] = {"target_share": share, "at": "training"}
    joblib.dump(data, path)
    return path


def routed_job(engine: Engine, router: str, tiers: list[str], classifier: Path) -> int:
    """Ten prompts routed: `tiers` in order (answered, not that drift cares)."""
    with session_scope(engine) as session:
        params = {"tiers": list(TIERS), "classifier": str(classifier)}
        job = Job(mode=JobMode.ROUTE, status=JobStatus.FINISHED, router=router, params=params)
        job.total = job.completed = len(tiers)
        session.add(job)
        session.flush()
        for idx, tier in enumerate(tiers):
            session.add(
                Prompt(
                    job_id=job.id, idx=idx, messages=[{"role": "user", "content": str(idx)}],
                    status=PromptStatus.SUCCEEDED, routed_tier=tier, final_tier=tier,
                )
            )  # fmt: skip
        assert job.id is not None
        return job.id


def report_of(engine: Engine, job_id: int) -> tuple[dict[str, Any], str]:
    with Session(engine) as session:
        report = build_report(session, job_id, tiers=TIERS)
    console = Console(record=True, width=120)
    print_report(console, report)
    return report, console.export_text()


def test_drift_arithmetic() -> None:
    assert tier_drift(tier="f", routed=5, total=10, calibrated=0.3).drifted  # type: ignore[union-attr]
    assert not tier_drift(tier="f", routed=4, total=10, calibrated=0.3).drifted  # type: ignore[union-attr]
    assert tier_drift(tier="f", routed=4, total=10, calibrated=None) is None
    assert tier_drift(tier="f", routed=0, total=0, calibrated=0.2) is None


def test_a_collapse_onto_the_frontier_is_flagged(engine: Engine, tmp_path: Path) -> None:
    path = classifier_file(tmp_path, 0.2)
    job_id = routed_job(engine, "classifier", ["frontier"] * 8 + ["small"] * 2, path)
    report, text = report_of(engine, job_id)
    assert report["drift"] == {
        "tier": "frontier", "calibrated_share": 0.2, "routed_share": 0.8, "margin": 0.1,
        "drifted": True,
    }  # fmt: skip
    assert "drift: 80.0 % routed to frontier, calibrated for 20.0 %" in text
    assert "distillery router calibrate" in text


def test_within_the_margin_and_without_calibration(engine: Engine, tmp_path: Path) -> None:
    path = classifier_file(tmp_path, 0.2)
    job_id = routed_job(engine, "classifier", ["frontier"] * 3 + ["medium"] * 7, path)
    report, text = report_of(engine, job_id)
    assert report["drift"]["drifted"] is False and "within 10 points" in text
    rules = routed_job(engine, "rules", ["frontier"] * 10, path)
    assert report_of(engine, rules)[0]["drift"] is None
    uncalibrated = routed_job(
        engine, "classifier", ["frontier"] * 10, classifier_file(tmp_path, None)
    )
    assert report_of(engine, uncalibrated)[0]["drift"] is None
