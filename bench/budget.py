"""Budget overshoot at 200 calls in flight: how far past `--max-cost` a job ends when its
calls' estimates are wrong, against the cap, in the same run.

One worker holds 200 calls in flight to the simulator (latency `--latency-ms`); the job has
more prompts than its cap pays for, so the budget stops it part-way. Two runs:

* bounded: `max_tokens` set, so every call's estimate is an upper bound (the simulator
  bills prompts with the chars counter's rule): the cap cannot be passed;
* unbounded: no `max_tokens`, and `--long-share` of the prompts ask for a ~3,000-word
  answer: each such call's estimate (prompt + 256 tokens) is far below its cost, so the
  calls in flight when the cap is reached can pass it.

Figures: overshoot (spent - cap) in USD, with the cap as baseline; the note gives the peak
calls in flight (from the attempts' start and end), the largest single-call estimate error,
and the bound "calls in flight x largest error".

    python -m bench.budget [--prompts 4000] [--calls-in-flight 200] [--quick]
"""

import argparse
import json
from datetime import timedelta
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
    machine_summary,
    report,
    say,
    scratch_dir,
    wait_for_job,
    write_worker_config,
)

BENCH = "budget"


def write_file(path: Path, count: int, long_share: float) -> Path:
    every = round(1 / long_share) if long_share else 0
    with path.open("w", encoding="utf-8") as handle:
        for n in range(count):
            tag = "[long] " if every and n % every == 0 else ""
            handle.write(json.dumps({"prompt": f"{tag}Explain idea {n} to a student."}) + "\n")
    return path


def peak_in_flight(attempts: list[Any]) -> int:
    edges = []
    for a in attempts:
        edges.append((a.started_at, 1))
        edges.append((a.started_at + timedelta(milliseconds=a.latency_ms), -1))
    peak = now = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        now += step
        peak = max(peak, now)
    return peak


def estimate_errors(engine: Any, job_id: int, config: Path) -> tuple[list[Any], float]:
    """The job's answer attempts and the largest (cost - estimate) of one call."""
    from sqlmodel import Session, select

    from models import Attempt, Job, Prompt
    from workers.budget import call_cost_estimate
    from workers.job_settings import load_job_settings
    from workers.settings import load_settings

    tier = load_settings(config).require_tier("frontier")
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        settings = load_job_settings(job.mode, job.params)
        rows = session.exec(
            select(Attempt, Prompt).join(Prompt).where(Prompt.job_id == job_id)
        ).all()
    worst = 0.0
    for attempt, prompt in rows:
        estimate = call_cost_estimate(tier, settings.request(prompt.messages))
        worst = max(worst, attempt.cost_usd - estimate)
    return [attempt for attempt, _ in rows], worst


def one_run(
    kind: str, label: str, prompts: int, in_flight: int, latency_ms: float, **job: Any
) -> None:
    from models import JobMode
    from producer.submit import submit_job
    from workers.app import app
    from workers.settings import load_settings

    workdir = scratch_dir(f"budget-{label}")
    with database(kind, workdir) as url:
        if url is None:
            return
        engine = fresh_engine(url)
        flush_bench_redis()
        with SimulatorProcess({"latency_ms": latency_ms}, workdir) as sim:
            config = write_worker_config(
                workdir / "worker.toml",
                base_url=sim.base_url,
                database_url=url,
                calls_in_flight=in_flight,
            )
            long_share = job.pop("long_share")
            source = write_file(workdir / "prompts.jsonl", prompts, long_share)
            with WorkerPool(workdir) as pool:
                pool.start(config, messages=2 * in_flight // 50 + 2)
                submitted = submit_job(
                    source,
                    mode=JobMode.TEACHER,
                    settings=load_settings(config),
                    engine=engine,
                    app=app,
                    overrides=job,
                )
                done = wait_for_job(engine, submitted.job_id, timeout_s=1800, poll_s=0.5)
            attempts, worst = estimate_errors(engine, submitted.job_id, config)
        cap = job["max_cost_usd"]
        spent = sum(a.cost_usd for a in attempts)
        peak = peak_in_flight(attempts)
        say(f"{label}: {len(attempts)} calls, {done.cancelled} prompts cancelled for budget")
        report(
            Figure(
                BENCH,
                f"{kind}: overshoot past the cap, {label}",
                spent - cap,
                "USD",
                baseline=cap,
                baseline_name="the cap",
                ratio=(spent - cap) / cap,
                ratio_name="overshoot/cap",
                note=(
                    f"spent {spent:.2f}; peak {peak} calls in flight; largest estimate error "
                    f"of a call {worst:+.2f} USD; bound in flight x error "
                    f"{peak * max(worst, 0):.2f} USD"
                ),
            )
        )
        dispose_engine(url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4000)
    parser.add_argument("--calls-in-flight", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--cap", type=float, default=1500.0, help="USD (5 USD per 1K tokens)")
    parser.add_argument("--long-share", type=float, default=0.05)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1,000 prompts, cap 300")
    args = parser.parse_args(argv)
    prompts, cap = (1000, 300.0) if args.quick else (args.prompts, args.cap)
    print(machine_summary(), flush=True)
    for kind in ("sqlite", "postgres") if args.postgres else ("sqlite",):
        for label, job in (
            ("bounded (max_tokens 300)", {"max_tokens": 300, "long_share": args.long_share}),
            ("unbounded (no max_tokens)", {"long_share": args.long_share}),
        ):
            one_run(
                kind,
                label,
                prompts,
                args.calls_in_flight,
                args.latency_ms,
                max_cost_usd=cap,
                **job,
            )


if __name__ == "__main__":
    main()
