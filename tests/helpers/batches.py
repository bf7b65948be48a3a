"""Batch jobs for tests: a config with fast polls, submitting `--via batch`, and reading the
batches back from the ledger and from the simulator."""

from pathlib import Path
from typing import Any

import openai
from sqlmodel import Session, select

from models import Batch
from simulator import RunningSimulator
from tests.helpers.config import write_config
from tests.helpers.pipeline import submit_file, write_jsonl

FAST_POLLS = {"batch_poll_s": 0.05, "batch_poll_max_s": 0.2}


def rows(count: int) -> list[dict[str, Any]]:
    return [
        {"prompt": f"Explain topic number {i} to a student.", "custom_id": f"u{i}"}
        for i in range(count)
    ]


def start_job(
    tmp_path: Path, sim: RunningSimulator, database_url: str, workers: Any, count: int, **tier: Any
) -> tuple[int, Any, Any]:
    fallback = tier.pop("fallback", None)
    config = write_config(
        tmp_path / "distillery.toml",
        base_url=sim.base_url,
        database_url=database_url,
        extra="[reducer]\nmin_length = 0\n",
        **{**FAST_POLLS, **tier},
    )
    workers.start(config, concurrency=4)
    source = write_jsonl(tmp_path / "prompts.jsonl", rows(count))
    overrides = {"via": "batch", "batch_fallback": fallback}
    return submit_file(source, config, overrides=overrides)


def batches_of(engine: Any, job_id: int) -> list[Batch]:
    with Session(engine) as session:
        return list(session.exec(select(Batch).where(Batch.job_id == job_id).order_by(Batch.id)))


def provider_batches(sim: RunningSimulator) -> list[Any]:
    client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    return list(client.batches.list(limit=100).data)
