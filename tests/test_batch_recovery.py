"""Batch jobs across crashes: Redis flushed while a batch runs (the ledger knows the provider's
batch ids), a worker killed between downloading a batch's results and committing them, and
`distillery cancel` stopping the provider's batches."""

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

from models import BatchStatus, JobStatus, PromptStatus, get_write_engine
from simulator import RunningSimulator
from tests.helpers.batches import batches_of, provider_batches, rows, start_job
from tests.helpers.pipeline import attempts_of, prompts_of, submit_file, wait_for_job, write_jsonl
from tests.helpers.workers import wait_until

HOLD = 3600.0  # a batch step this long keeps batches still until a test lets them go


def wait_for_provider_id(engine: Any, job_id: int, workers: Any) -> None:
    def started() -> bool:
        found = batches_of(engine, job_id)
        return bool(found) and all(b.provider_batch_id and b.polls for b in found)

    wait_until(started, timeout=120, what="the batch to start", logs=workers.log_text)


def test_redis_flushed_while_a_batch_runs_then_resume(
    tmp_path: Path,
    batch_sim: RunningSimulator,
    database_url: str,
    workers: Any,
    clean_redis: Any,
) -> None:
    batch_sim.configure_batches(step_s=HOLD)
    job_id, engine, settings = start_job(tmp_path, batch_sim, database_url, workers, 12)
    wait_for_provider_id(engine, job_id, workers)
    workers.stop()
    clean_redis.flushdb()  # every message (the batch's next poll) is gone
    batch_sim.configure_batches(step_s=0)
    config = tmp_path / "distillery.toml"
    workers.start(config, concurrency=4)
    from producer.jobs import resume

    assert resume(job_id, settings=settings, engine=engine) == 12
    job = wait_for_job(engine, job_id, workers)
    assert (job.status, job.completed) == (JobStatus.FINISHED, 12)
    assert len(provider_batches(batch_sim)) == 1  # picked up, not sent again
    assert len(attempts_of(engine, job_id)) == 12
    assert batch_sim.stats()["requests"] == 0  # and nothing went online behind its back


KILLED_BEFORE_COMMIT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import workers.batches.ingest as ingest
    from models import get_write_engine
    from workers.batches.client import BatchClient
    from workers.batches.poll import poll_batch
    from workers.settings import load_settings

    def killed(**_):  # the files are downloaded and the lines written, not committed
        os._exit(9)

    ingest.update_batch = killed
    settings = load_settings(Path(sys.argv[1]))
    tier = settings.require_tier("frontier")
    with BatchClient(tier) as client:
        poll_batch(get_write_engine(settings.database_url), int(sys.argv[2]), 0.05, tier, client)
    """
)


def test_worker_killed_between_download_and_commit(
    tmp_path: Path, batch_sim: RunningSimulator, database_url: str, clean_redis: Any
) -> None:
    from tests.helpers.config import write_config
    from workers.batches.client import BatchClient
    from workers.batches.poll import poll_batch
    from workers.batches.submit import start_job_batches

    config = write_config(
        tmp_path / "distillery.toml", base_url=batch_sim.base_url, database_url=database_url
    )
    source = write_jsonl(tmp_path / "prompts.jsonl", rows(5))
    job_id, engine, settings = submit_file(source, config, overrides={"via": "batch"})
    tier = settings.require_tier("frontier")
    write = get_write_engine(settings.database_url)
    with BatchClient(tier) as client:  # no worker: this test runs the steps itself
        [batch_id] = start_job_batches(write, job_id, tier, client).polling
        for _ in range(2):  # validating → in_progress → finalizing
            assert poll_batch(write, batch_id, 0.05, tier, client).next_delay_s is not None
        died = subprocess.run(
            [sys.executable, "-c", KILLED_BEFORE_COMMIT, str(config), str(batch_id)]
        )
        assert died.returncode == 9
        assert attempts_of(engine, job_id) == []  # nothing of it was committed
        assert batches_of(engine, job_id)[0].ingested_at is None
        taken = poll_batch(write, batch_id, 0.05, tier, client).ingested  # the next poll
        assert taken is not None and len(taken.records) == 5
        again = poll_batch(write, batch_id, 0.05, tier, client)
        assert again.ingested is None and again.next_delay_s is None  # done, once
    assert all(p.status == PromptStatus.SUCCEEDED for p in prompts_of(engine, job_id))
    assert Counter(a.prompt_id for a in attempts_of(engine, job_id)) == {
        p.id: 1 for p in prompts_of(engine, job_id)
    }
    with engine.connect() as conn:
        from models.tables import JOBS

        assert conn.execute(JOBS.select().where(JOBS.c.id == job_id)).one().completed == 5


def test_cancel_cancels_the_provider_batches(
    tmp_path: Path, batch_sim: RunningSimulator, sqlite_url: str, workers: Any
) -> None:
    batch_sim.configure_batches(step_s=HOLD)
    job_id, engine, settings = start_job(tmp_path, batch_sim, sqlite_url, workers, 6)
    wait_for_provider_id(engine, job_id, workers)
    from producer.jobs import cancel

    assert cancel(job_id, engine=engine, settings=settings) == 6
    [provider] = provider_batches(batch_sim)
    assert provider.status in ("cancelling", "cancelled")  # a read moves it on

    def committed() -> bool:
        return all(b.ingested_at for b in batches_of(engine, job_id))

    wait_until(committed, timeout=120, what="the cancelled batch's poll", logs=workers.log_text)
    [batch] = batches_of(engine, job_id)
    assert batch.status == BatchStatus.CANCELLED
    assert attempts_of(engine, job_id) == []
    assert {p.status for p in prompts_of(engine, job_id)} == {PromptStatus.CANCELLED}
