"""Rate-limit utilisation: how much of the provider's limit a job uses, end to end, without
tripping it.

Each tier is limited to R requests/min in the config, and the simulator enforces the same R
per model the way providers do: smoothed (a steady rate of R/60 a second, a request at most
`--burst-s` ahead of it; `simulator.limits`), answering 429 with Retry-After beyond it. A
job of R x minutes prompts per tier runs on real `distillery worker` processes sharing the
limit through Redis, in two set-ups: 2 workers on 1 tier, and 4 workers over 2 tiers (each
worker consumes both). The simulator's own log of arrivals says what the provider saw.

The figure is end to end: the limit allows N calls in N x 60/R s, so a tier's use of it is
(N x 60/R) / (its last answer - its first call), the answer leaving the simulator one
latency after the last call arrived. The baseline is R itself, the most the provider
accepts. The 429s are the share of every call the simulator refused.

    python -m bench.rate_limit [--rpm 1200] [--minutes 1] [--burst-s 1] [--quick]
"""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    TIER,
    TIER_MODELS,
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
TARGET_UTILISATION = 0.97
TARGET_429_SHARE = 0.005
# Per worker. R=1200 at 200 ms needs ~4 calls in flight in all; the rest wait on the
# limiter, asleep. The tier's default concurrency would do as well; a fixed figure keeps the
# benchmark about the limiter alone.
CALLS_IN_FLIGHT = 16


@dataclass(frozen=True)
class Setup:
    workers: int
    tiers: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.workers} workers, {len(self.tiers)} tier{'s' * (len(self.tiers) > 1)}"


SETUPS = (Setup(2, (TIER,)), Setup(4, tuple(TIER_MODELS)))


@dataclass(frozen=True)
class Traffic:
    """What the simulator saw of one model: arrival times of accepted calls, the refusals."""

    accepted: list[float]
    refused: int
    total: int

    def span_s(self) -> float:
        """First call to last answer (it leaves the simulator one latency after arriving)."""
        return self.accepted[-1] + LATENCY_MS / 1000 - self.accepted[0]

    def utilisation(self, rpm: int) -> float:
        return len(self.accepted) * WINDOW_S / rpm / self.span_s()


def traffic(sim: SimulatorProcess, model: str) -> Traffic:
    events = sim.events(model)
    accepted = sorted(t for t, status, _ in events if status == 200)
    refused = sum(1 for _, status, _ in events if status == 429)
    return Traffic(accepted, refused, len(events))


def busiest_second(times: list[float]) -> int:
    """The most accepted calls in any 1 s: R/60 plus the burst the provider allowed."""
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def run_limited_jobs(setup: Setup, rpm: int, minutes: float, burst_s: float) -> dict[str, Traffic]:
    """One job per tier, submitted together; what the simulator saw of each tier's model."""
    workdir = scratch_dir(f"rate-limit-{setup.workers}w")
    count = math.ceil(rpm * minutes)
    behaviour = {"latency_ms": LATENCY_MS, "rpm": rpm, "burst_s": burst_s}
    with (
        SimulatorProcess(behaviour, workdir) as sim,
        database("sqlite", workdir) as url,
    ):
        assert url is not None
        engine = fresh_engine(url)
        configs = [tier_config(workdir, sim, url, rpm, setup.tiers, tier) for tier in setup.tiers]
        flush_bench_redis()
        with WorkerPool(workdir) as pool:
            pool.start(configs[0], count=setup.workers, tiers=",".join(setup.tiers))
            say(f"{setup.label}: {count} prompts a tier at {rpm}/min, about {minutes:.1f} min")
            jobs = [
                submit(prompts(workdir, tier, count), config, engine)
                for tier, config in zip(setup.tiers, configs, strict=True)
            ]
            for job_id in jobs:
                wait_for_job(engine, job_id, timeout_s=minutes * 180 + 120, poll_s=1.0)
        seen = {tier: traffic(sim, TIER_MODELS[tier]) for tier in setup.tiers}
        dispose_engine(url)
    return seen


def tier_config(
    workdir: Path, sim: SimulatorProcess, url: str, rpm: int, tiers: tuple[str, ...], tier: str
) -> Path:
    """The workers' config (every tier), with `tier` as the teacher that its jobs go to."""
    return write_worker_config(
        workdir / f"distillery-{tier}.toml",
        base_url=sim.base_url,
        database_url=url,
        rpm=rpm,
        calls_in_flight=CALLS_IN_FLIGHT,
        tiers=tiers,
        teacher=tier,
    )


def prompts(workdir: Path, tier: str, count: int) -> Path:
    return write_prompts(workdir / f"prompts-{tier}.jsonl", count)


def report_utilisation(setup: Setup, tier: str, seen: Traffic, rpm: int) -> None:
    utilisation = seen.utilisation(rpm)
    report(
        Figure(
            BENCH,
            f"limit used end to end, {setup.label}, tier {tier}",
            len(seen.accepted) / seen.span_s() * 60,
            "requests/min",
            baseline=rpm,
            baseline_name="R (the provider's limit)",
            ratio=utilisation,
            ratio_name="achieved/R",
            target=f">= {TARGET_UTILISATION:.2f}",
            met=utilisation >= TARGET_UTILISATION,
            note=(
                f"{len(seen.accepted)} calls, first call to last answer {seen.span_s():.2f} s "
                f"(the limit allows them in {len(seen.accepted) * WINDOW_S / rpm:.2f} s); "
                f"busiest second {busiest_second(seen.accepted)} calls"
            ),
        )
    )


def report_refusals(setup: Setup, seen: dict[str, Traffic]) -> None:
    refused = sum(t.refused for t in seen.values())
    total = sum(t.total for t in seen.values())
    share = refused / total if total else 0.0
    report(
        Figure(
            BENCH,
            f"429 answers, {setup.label}",
            share * 100,
            "% of calls",
            target=f"<= {TARGET_429_SHARE * 100:.1f} %",
            met=share <= TARGET_429_SHARE,
            note=f"{refused} of {total} calls refused",
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rpm", type=int, default=1200, help="R, requests/min per tier")
    parser.add_argument("--minutes", type=float, default=1.0, help="R x minutes prompts a tier")
    parser.add_argument(
        "--burst-s", type=float, default=1.0, help="how far ahead of R the simulator allows"
    )
    parser.add_argument("--only", choices=["2", "4"], help="one set-up: 2 or 4 workers")
    parser.add_argument("--quick", action="store_true", help="a quarter minute, for a smoke run")
    args = parser.parse_args(argv)
    minutes = 0.25 if args.quick else args.minutes
    print(f"== rate-limit utilisation ({machine_summary()})", flush=True)
    for setup in SETUPS:
        if args.only and int(args.only) != setup.workers:
            continue
        seen = run_limited_jobs(setup, args.rpm, minutes, args.burst_s)
        for tier, tier_traffic in seen.items():
            report_utilisation(setup, tier, tier_traffic, args.rpm)
        report_refusals(setup, seen)


if __name__ == "__main__":
    main()
