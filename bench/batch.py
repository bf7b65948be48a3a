"""Batch API path: seconds from submit to a finished (and reduced) 10,000-prompt teacher
job sent `--via batch` to the simulator, its batch speed set high (a stage every 0.2 s, so
a batch's lifetime is under a second and what is measured is our side: packing, uploads,
polls, downloads and the commit of every line).

Baseline, same run, same worker and database: the same prompts as an online teacher job
against the simulator at 0 ms latency (the fastest the online path can go). Also printed:
the two jobs' cost (the batch price is the tier's `batch_discount` off, 0.5 by default).

    python -m bench.batch [--prompts 10000] [--quick] [--no-postgres]
"""

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Figure,
    SimulatorProcess,
    WorkerPool,
    database,
    dispose_engine,
    flush_bench_redis,
    fresh_engine,
    http_json,
    machine_summary,
    report,
    say,
    scratch_dir,
    wait_for_job,
    write_prompts,
    write_worker_config,
)

BENCH = "batch"
STEP_S = 0.2
POLLS = "batch_poll_s = 0.1\nbatch_poll_max_s = 0.5\nbatch_max_requests = 5000\n"


def submit(path: Path, config: Path, engine: Any, via: str) -> int:
    from models import JobMode
    from producer.submit import submit_job
    from workers.app import app
    from workers.settings import load_settings

    settings = load_settings(config)
    submitted = submit_job(
        path, mode=JobMode.TEACHER, settings=settings, engine=engine, app=app,
        overrides={"via": via},
    )  # fmt: skip
    return submitted.job_id


def wait_for_training_file(engine: Any, job_id: int) -> None:
    from models import session_scope
    from models.queries import has_training_file

    while True:
        with session_scope(engine) as session:
            if has_training_file(session=session, job_id=job_id):
                return
        time.sleep(0.05)


def run(kind: str, prompts: int, via: str) -> tuple[float, dict[str, Any]]:
    workdir = scratch_dir(f"batch-{kind}-{via}")
    path = write_prompts(workdir / "prompts.jsonl", prompts)
    with SimulatorProcess({"latency_ms": 0}, workdir) as sim, database(kind, workdir) as url:
        if url is None:
            return float("nan"), {}
        http_json(f"{sim.url}/admin/batches", {"step_s": STEP_S})
        engine = fresh_engine(url)
        config = write_worker_config(
            workdir / "distillery.toml", base_url=sim.base_url, database_url=url, tier_extra=POLLS
        )
        flush_bench_redis()
        with WorkerPool(workdir) as pool:
            pool.start(config)
            started = time.monotonic()
            job_id = submit(path, config, engine, via)
            job = wait_for_job(engine, job_id, timeout_s=1800, poll_s=0.05)
            wait_for_training_file(engine, job_id)
            elapsed = time.monotonic() - started
        from producer.jobs import summary

        shown = summary(engine, job_id)
        assert job.completed == prompts, f"{job.completed} of {prompts} answered"
        dispose_engine(url)
    return elapsed, shown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="2,000 prompts")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    prompts = 2000 if args.quick else args.prompts
    print(f"== batch path, {prompts:,} prompts ({machine_summary()})", flush=True)
    for kind in ["sqlite"] + ([] if args.no_postgres else ["postgres"]):
        online_s, online = run(kind, prompts, "online")
        batch_s, batched = run(kind, prompts, "batch")
        if not batched:
            say(f"{kind}: no server, skipped")
            continue
        polls = sum(b["polls"] for b in batched["batches"])
        report(
            Figure(
                BENCH,
                f"{kind}: submit -> done (reduced), {prompts:,} prompts via batch",
                batch_s,
                "s",
                baseline=online_s,
                baseline_name="the same job online, simulator at 0 ms",
                ratio=batch_s / online_s,
                ratio_name="batch/online",
                note=(
                    f"{len(batched['batches'])} batches, {polls} polls; cost "
                    f"${batched['cost_usd']:.2f} batch vs ${online['cost_usd']:.2f} online"
                ),
            )
        )


if __name__ == "__main__":
    main()
