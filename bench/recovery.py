"""Recovery time with the default `[recovery]` periods (heartbeat 3 s, lease 10 s, sweep
10 s): how long after a fault a job ends, against how long its remaining work takes.

Two workers answer a teacher job (simulator at 50 ms). A baseline run without a fault
gives one worker's rate. Then the same job with a fault when a share of it is done (a
third by default; near the end, the fault's delay is not hidden behind remaining work),
and no `distillery resume`:

* `sigkill`: one of the two workers is killed with SIGKILL; the survivor finishes alone.
* `flush`: the bench's Redis database is flushed (FLUSHDB on database 8: every queued
  message and every lease; the shared server's other databases are left alone).

Figure: the delay the fault added, (fault → job finished) - (the work left at the fault
at the rate the remaining workers do it, from the baseline). Target ≤ 60 s.

    python -m bench.recovery [--prompts 3000] [--only sigkill,flush] [--fault-at 0.9]
"""

import argparse
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_REDIS_URL,
    Figure,
    SimulatorProcess,
    WorkerPool,
    database,
    dispose_engine,
    flush_bench_redis,
    fresh_engine,
    machine_summary,
    report,
    say,
    scratch_dir,
    wait_for_job,
    write_prompts,
    write_worker_config,
)
from bench.pipeline_vs_direct import submit

BENCH = "recovery"
LATENCY_MS = 50
WORKERS = 2
CALLS_IN_FLIGHT = 8
MESSAGES = 4  # `distillery worker --concurrency`: messages each worker holds at once
TARGET_DELAY_S = 60.0


def done(engine: Any, job_id: int) -> int:
    from sqlmodel import Session

    from models import Job

    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.done


# A worker's log line: "[2026-12-02 07:20:01,123: WARNING/MainProcess] ... re-sent 50 prompts"
RESENT = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): .*re-sent (\d+) prompts", re.M)


def first_resend(workdir: Path, fault_wall: float) -> tuple[float | None, int]:
    """Seconds from the fault to the sweeper's first re-send (None: it re-sent nothing),
    and how many prompts it re-sent in all."""
    found = [m for log in workdir.glob("worker-*.log") for m in RESENT.finditer(log.read_text())]
    if not found:
        return None, 0
    first = min(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in found)
    return first.timestamp() - fault_wall, sum(int(m.group(2)) for m in found)


def run(prompts: int, fault: str | None, fault_at_share: float) -> tuple[float, float, int, str]:
    """(seconds from submit to finish, seconds from the fault to finish, prompts left at
    the fault, what the sweeper did) of one job; the fault is None for the baseline."""
    workdir = scratch_dir(f"recovery-{fault or 'baseline'}")
    path = write_prompts(workdir / "prompts.jsonl", prompts)
    with (
        SimulatorProcess({"latency_ms": LATENCY_MS}, workdir) as sim,
        database("sqlite", workdir) as url,
    ):
        assert url is not None and sim
        engine = fresh_engine(url)
        config = write_worker_config(
            workdir / "distillery.toml",
            base_url=sim.base_url,
            database_url=url,
            calls_in_flight=CALLS_IN_FLIGHT,
        )
        flush_bench_redis()
        with WorkerPool(workdir) as pool:
            pool.start(config, count=WORKERS, messages=MESSAGES)
            started = time.monotonic()
            job_id = submit(path, config, engine)
            fault_at, left = started, prompts
            if fault:
                while done(engine, job_id) < prompts * fault_at_share:
                    time.sleep(0.05)
                fault_at, left = time.monotonic(), prompts - done(engine, job_id)
                fault_wall = time.time()
                inject(fault, pool)
            wait_for_job(engine, job_id, timeout_s=600, poll_s=0.1)
            ended = time.monotonic()
        dispose_engine(url)
        check_once(engine_url=url, job_id=job_id, prompts=prompts, workdir=workdir)
    swept = ""
    if fault:
        after, resent = first_resend(workdir, fault_wall)
        swept = f"first re-send {after:.1f} s after the fault, {resent} prompts" if after else ""
    return ended - started, ended - fault_at, left, swept or "nothing re-sent"


def inject(fault: str, pool: WorkerPool) -> None:
    if fault == "sigkill":
        pool.processes[0].kill()
        pool.processes[0].wait()
    elif fault == "flush":
        import redis

        redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
    else:
        raise ValueError(fault)


def check_once(*, engine_url: str, job_id: int, prompts: int, workdir: Path) -> None:
    """Every prompt answered, once (a figure from a job that did not really finish is
    worthless)."""
    from sqlalchemy import func, select
    from sqlmodel import Session, col

    from models import Attempt, AttemptStatus, Prompt

    engine = fresh_engine(engine_url)
    with Session(engine) as session:
        answered = session.execute(
            select(func.count(func.distinct(col(Attempt.prompt_id))))
            .join(Prompt)
            .where(col(Prompt.job_id) == job_id, col(Attempt.status) == AttemptStatus.OK)
        ).scalar_one()
        calls = session.execute(
            select(func.count())
            .select_from(Attempt)
            .join(Prompt)
            .where(col(Prompt.job_id) == job_id, col(Attempt.status) == AttemptStatus.OK)
        ).scalar_one()
    dispose_engine(engine_url)
    assert answered == calls == prompts, (answered, calls, prompts, workdir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=3000)
    parser.add_argument("--only", default="sigkill,flush")
    parser.add_argument("--fault-at", type=float, default=1 / 3, help="share done at the fault")
    parser.add_argument("--quick", action="store_true", help="1,500 prompts")
    args = parser.parse_args(argv)
    prompts = 1500 if args.quick else args.prompts
    print(f"== recovery with the default periods ({machine_summary()})", flush=True)
    total, _, _, _ = run(prompts, None, 0)
    per_worker = prompts / total / WORKERS
    say(f"baseline: {prompts} prompts in {total:.1f} s ({per_worker:.0f}/s per worker)")
    for fault in args.only.split(","):
        _, after, left, swept = run(prompts, fault, args.fault_at)
        survivors = WORKERS - 1 if fault == "sigkill" else WORKERS
        remaining_s = left / (per_worker * survivors)
        delay = after - remaining_s
        report(
            Figure(
                BENCH,
                f"{fault} at {args.fault_at:.0%} done: delay the fault added",
                delay,
                "s",
                baseline=remaining_s,
                baseline_name=f"the {left} prompts left, at {survivors} worker(s)' rate",
                target=f"<= {TARGET_DELAY_S:.0f} s",
                met=delay <= TARGET_DELAY_S,
                note=f"fault -> job finished {after:.1f} s; {swept}",
            )
        )


if __name__ == "__main__":
    main()
