"""Worker memory: peak RSS of a `distillery worker` process with 200 calls in flight.

The simulator takes 5 s per answer, so calls pile up: one worker whose tier allows 200
calls in flight (the tier's `concurrency`, the worker's call pool), then two workers of 100
each. Each worker's peak RSS is VmHWM in /proc/PID/status, read when its job has finished;
the baseline is the same worker idle (VmRSS once it is ready, before any message). The
simulator's arrival log shows how many calls really were in flight at once.

    python -m bench.worker_memory [--quick]
"""

import argparse
import time
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
    mib,
    proc_status_kib,
    report,
    scratch_dir,
    wait_for_job,
    write_prompts,
    write_worker_config,
)
from bench.pipeline_vs_direct import submit

BENCH = "worker_memory"
LATENCY_MS = 5000
TARGET_MIB = 300.0
IDLE_SETTLE_S = 3.0  # let a fresh worker finish starting before its idle RSS is read
IN_FLIGHT = 200
WAVES = 2  # prompts = waves x calls in flight, so the pool fills twice


@dataclass(frozen=True)
class WorkerMemory:
    idle_mib: list[float]
    peak_mib: list[float]
    most_in_flight: int  # on the simulator's side, all workers together


def most_in_flight(arrivals: list[float], latency_s: float) -> int:
    """The most calls in flight at once, from arrival times and a fixed latency."""
    arrivals = sorted(arrivals)
    most, first = 0, 0
    for last, at in enumerate(arrivals):
        while arrivals[first] <= at - latency_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def measure(sim: SimulatorProcess, workers: int, per_worker: int) -> WorkerMemory:
    workdir = scratch_dir(f"worker-memory-{workers}x{per_worker}")
    prompts = write_prompts(workdir / "prompts.jsonl", WAVES * workers * per_worker)
    with database("sqlite", workdir) as url:
        assert url is not None
        engine = fresh_engine(url)
        config = write_worker_config(
            workdir / "distillery.toml",
            base_url=sim.base_url,
            database_url=url,
            calls_in_flight=per_worker,
        )
        flush_bench_redis()
        with WorkerPool(workdir) as pool:
            pool.start(config, count=workers)
            time.sleep(IDLE_SETTLE_S)
            idle = [mib(proc_status_kib(pid, "VmRSS")) for pid in pool.pids]
            sim.reset_stats()
            job_id = submit(prompts, config, engine)
            wait_for_job(engine, job_id, timeout_s=600, poll_s=0.5)
            peak = [mib(proc_status_kib(pid, "VmHWM")) for pid in pool.pids]
        arrivals = [at for at, status, _ in sim.events() if status == 200]
        dispose_engine(url)
    return WorkerMemory(idle, peak, most_in_flight(arrivals, LATENCY_MS / 1000))


def report_memory(label: str, memory: WorkerMemory) -> None:
    peak, idle = max(memory.peak_mib), max(memory.idle_mib)
    report(
        Figure(
            BENCH,
            f"peak RSS, {label}",
            peak,
            "MiB",
            baseline=idle,
            baseline_name="the idle worker",
            ratio=peak / idle,
            ratio_name="peak/idle",
            target=f"<= {TARGET_MIB:.0f} MB per worker",
            met=peak <= TARGET_MIB,
            note=(
                f"per worker peak {', '.join(f'{m:.0f}' for m in memory.peak_mib)} MiB; "
                f"{memory.most_in_flight} calls in flight at most (simulator side)"
            ),
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only the one-worker case")
    args = parser.parse_args(argv)
    print(f"== worker memory ({machine_summary()})", flush=True)
    with SimulatorProcess({"latency_ms": LATENCY_MS}, scratch_dir("memory-sim")) as sim:
        one = measure(sim, 1, IN_FLIGHT)
        report_memory(f"1 worker, {IN_FLIGHT} calls in flight", one)
        if not args.quick:
            two = measure(sim, 2, IN_FLIGHT // 2)
            report_memory(f"2 workers x {IN_FLIGHT // 2} calls in flight", two)


if __name__ == "__main__":
    main()
