"""Rate-limit utilisation: how close the global per-tier limit runs to the provider's limit
without tripping it.

One tier is limited to R requests/min in the config, and the simulator enforces the same R
(a sliding 60 s window, 429 with Retry-After beyond it). Two worker processes share the
tier's limit through Redis. The simulator's own log of arrivals says what the provider
saw: the achieved rate over the steady window (from 60 s after the first call, once the
60 s window is full and binding, to the last call) as a share of R, and the 429s.
The baseline is R itself, the most the provider accepts.

    python -m bench.rate_limit [--rpm 600] [--seconds 180] [--quick]
"""

import argparse
import math
from dataclasses import dataclass

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
    write_prompts,
    write_worker_config,
)
from bench.pipeline_vs_direct import submit

BENCH = "rate_limit"
WINDOW_S = 60.0
LATENCY_MS = 200
WORKERS = 2
# Per worker. R=600 at 200 ms needs ~2 calls in flight; the rest wait on the limiter, asleep.
CALLS_IN_FLIGHT = 16
TARGET_UTILISATION = 0.95
TARGET_429_SHARE = 0.005


@dataclass(frozen=True)
class Traffic:
    """What the simulator saw: arrival times of accepted calls, and the refusals."""

    accepted: list[float]
    refused: int
    total: int

    @property
    def share_429(self) -> float:
        return self.refused / self.total if self.total else 0.0


def traffic(sim: SimulatorProcess) -> Traffic:
    events = sim.events()
    accepted = sorted(t for t, status, _ in events if status == 200)
    refused = sum(1 for _, status, _ in events if status == 429)
    return Traffic(accepted, refused, len(events))


def rate_per_minute(times: list[float], start: float, end: float) -> float:
    """Calls per minute that arrived in [start, end]."""
    inside = sum(1 for t in times if start <= t <= end)
    return inside / (end - start) * 60


def busiest_window(times: list[float]) -> int:
    """The most accepted calls in any 60 s window: above R would mean the limiter let a
    provider-side minute overflow (the simulator would have refused them)."""
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - WINDOW_S:
            first += 1
        most = max(most, last - first + 1)
    return most


def run_limited_job(rpm: int, seconds: float) -> Traffic:
    workdir = scratch_dir("rate-limit")
    count = math.ceil(rpm * seconds / 60)
    prompts = write_prompts(workdir / "prompts.jsonl", count)
    behaviour = {"latency_ms": LATENCY_MS, "rpm": rpm}
    with (
        SimulatorProcess(behaviour, workdir) as sim,
        database("sqlite", workdir) as url,
    ):
        assert url is not None
        engine = fresh_engine(url)
        config = write_worker_config(
            workdir / "distillery.toml",
            base_url=sim.base_url,
            database_url=url,
            rpm=rpm,
            calls_in_flight=CALLS_IN_FLIGHT,
        )
        flush_bench_redis()
        with WorkerPool(workdir) as pool:
            pool.start(config, count=WORKERS)
            say(f"{count} prompts at {rpm}/min: about {seconds:.0f} s")
            job_id = submit(prompts, config, engine)
            wait_for_job(engine, job_id, timeout_s=seconds * 3 + 120, poll_s=1.0)
        seen = traffic(sim)
        dispose_engine(url)
    return seen


def report_utilisation(seen: Traffic, rpm: int) -> None:
    first, last = seen.accepted[0], seen.accepted[-1]
    steady_start = first + WINDOW_S if last - first > 2 * WINDOW_S else first
    achieved = rate_per_minute(seen.accepted, steady_start, last)
    utilisation = achieved / rpm
    whole_run = rate_per_minute(seen.accepted, first, last)
    report(
        Figure(
            BENCH,
            f"achieved rate, {WORKERS} workers, steady window {last - steady_start:.0f} s",
            achieved,
            "requests/min",
            baseline=rpm,
            baseline_name="R (the provider's limit)",
            ratio=utilisation,
            ratio_name="achieved/R",
            target=f">= {TARGET_UTILISATION:.2f}",
            met=utilisation >= TARGET_UTILISATION,
            note=(
                f"whole run {whole_run:.1f}/min over {last - first:.0f} s; "
                f"busiest 60 s window {busiest_window(seen.accepted)} calls"
            ),
        )
    )


def report_refusals(seen: Traffic) -> None:
    report(
        Figure(
            BENCH,
            "429 answers",
            seen.share_429 * 100,
            "% of calls",
            target=f"<= {TARGET_429_SHARE * 100:.1f} %",
            met=seen.share_429 <= TARGET_429_SHARE,
            note=f"{seen.refused} of {seen.total} calls refused",
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rpm", type=int, default=600, help="R, requests/min")
    parser.add_argument("--seconds", type=float, default=180, help="length of the load")
    parser.add_argument("--quick", action="store_true", help="30 s, for a smoke run")
    args = parser.parse_args(argv)
    seconds = 30.0 if args.quick else args.seconds
    print(f"== rate-limit utilisation ({machine_summary()})", flush=True)
    seen = run_limited_job(args.rpm, seconds)
    report_utilisation(seen, args.rpm)
    report_refusals(seen)


if __name__ == "__main__":
    main()
