"""Pipeline vs direct: how much of a model server's throughput the whole pipeline keeps.

The simulator answers every request after a fixed 200 ms and enforces no limit; it runs
as its own process. The baseline is `openai.AsyncOpenAI` calling it straight, at the best
of a few concurrencies. Then the same prompts go through the pipeline a user runs
(submit -> Redis -> two `distillery worker` processes -> call -> persist in SQL), at the
best of a few calls-in-flight per worker (the tier's `concurrency`, the size of each
worker's cap on calls in flight; `--concurrency`, messages at once, stays at the CLI's default), on
SQLite and on PostgreSQL, and first out of the box: a config with no `concurrency` at all,
compared with both direct clients (targets 0.9 and 0.8). Throughput is prompts / (the job's
`finished_at` in the ledger - the moment submit was called).

    python -m bench.pipeline_vs_direct [--quick] [--no-postgres] [--py-spy DIR]
        [--prompts N] [--calls-in-flight 64,128,256] [--default-only]
"""

import argparse
import asyncio
import dataclasses
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    MODEL,
    PYTHON,
    Figure,
    SimulatorProcess,
    WorkerPool,
    cpu_by_pid,
    database,
    dispose_engine,
    flush_bench_redis,
    fresh_engine,
    machine_summary,
    postgres_backend_pids,
    prompt_text,
    report,
    say,
    scratch_dir,
    utc_now,
    wait_for_job,
    write_prompts,
    write_worker_config,
)

BENCH = "pipeline"
LATENCY_MS = 200
WORKERS = 2
TARGET_RATIO = 0.90
# Out of the box (no `concurrency` in the config) against the workers' own client direct.
TARGET_LEAN_RATIO = 0.80
SYSTEM_PROMPT = "You are a helpful assistant."  # what a teacher job sends by default
TEMPERATURE = 0.7


@dataclass(frozen=True)
class Sizes:
    direct_prompts: int
    pipeline_prompts: int
    direct_concurrencies: tuple[int, ...]
    worker_concurrencies: tuple[int, ...]


FULL = Sizes(4000, 3000, (50, 100, 200, 400), (64, 128, 256))
QUICK = Sizes(600, 400, (50, 200), (64,))


# ------------------------------------------------------------------------------- direct


def teacher_messages(number: int) -> list[dict[str, str]]:
    """The request body a teacher job sends for prompt `number`, so both sides do the same."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": prompt_text(number)},
    ]


async def _call_all(
    call: Callable[[int], Awaitable[None]],
    failure: type[Exception],
    numbers: range,
    concurrency: int,
) -> int:
    """Call once per number with `concurrency` calls in flight; returns how many failed."""
    pending = iter(numbers)
    failures = 0

    async def caller() -> None:
        nonlocal failures
        for number in pending:  # one shared iterator: each number is taken once
            try:
                await call(number)
            except failure:
                failures += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return failures


@dataclass(frozen=True)
class DirectRun:
    concurrency: int
    rate: float  # answered prompts/s
    failures: int
    client_cpu_ms: float  # per prompt, this process (the asyncio client)
    sim_cpu_ms: float  # per prompt, the simulator process

    @property
    def cpu_ms(self) -> float:
        return self.client_cpu_ms + self.sim_cpu_ms


async def _direct_run(sim: SimulatorProcess, count: int, concurrency: int) -> DirectRun:
    import httpx2  # the HTTP library this openai client is built on
    import openai

    # Keep-alive for every slot: the default pool keeps 100, and reconnecting the rest on
    # every call would make the baseline look worse than direct calls can be.
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    http_client = openai.DefaultAsyncHttpxClient(limits=limits, timeout=60)
    async with openai.AsyncOpenAI(
        base_url=sim.base_url, api_key="bench", max_retries=0, http_client=http_client
    ) as client:

        async def call(number: int) -> None:
            await client.chat.completions.create(
                model=MODEL, messages=teacher_messages(number), temperature=TEMPERATURE
            )

        return await _measured(sim, call, openai.APIError, count, concurrency)


async def _direct_lean_run(sim: SimulatorProcess, count: int, concurrency: int) -> DirectRun:
    """The same calls through the workers' own client (`workers.http_client`)."""
    from workers.chat import CallError, ChatRequest
    from workers.http_client import ChatClient
    from workers.settings import TierConfig

    tier = TierConfig(name="bench", base_url=sim.base_url, model=MODEL)  # type: ignore[arg-type]
    client = ChatClient()
    try:

        async def call(number: int) -> None:
            request = ChatRequest(teacher_messages(number), temperature=TEMPERATURE)
            await client.call(tier, request)

        return await _measured(sim, call, CallError, count, concurrency)
    finally:
        await client.close()


async def _measured(
    sim: SimulatorProcess,
    call: Callable[[int], Awaitable[None]],
    failure: type[Exception],
    count: int,
    concurrency: int,
) -> DirectRun:
    await _call_all(call, failure, range(concurrency), concurrency)  # warm the connections
    started, cpu, sim_cpu = time.perf_counter(), time.process_time(), sim.cpu_seconds()
    failures = await _call_all(call, failure, range(count), concurrency)
    elapsed = time.perf_counter() - started
    cpu, sim_cpu = time.process_time() - cpu, sim.cpu_seconds() - sim_cpu
    per_prompt_ms = 1e3 / count
    return DirectRun(
        concurrency,
        (count - failures) / elapsed,
        failures,
        cpu * per_prompt_ms,
        sim_cpu * per_prompt_ms,
    )


def best_direct_run(
    sim: SimulatorProcess,
    sizes: Sizes,
    run_one: Callable[[SimulatorProcess, int, int], Awaitable[DirectRun]] = _direct_run,
    label: str = "direct AsyncOpenAI",
) -> DirectRun:
    runs: list[DirectRun] = []
    for concurrency in sizes.direct_concurrencies:
        run = asyncio.run(run_one(sim, sizes.direct_prompts, concurrency))
        runs.append(run)
        report(
            Figure(
                BENCH,
                f"{label}, {concurrency} in flight",
                run.rate,
                "prompts/s",
                note=(
                    f"{sizes.direct_prompts} prompts, {run.failures} failed; CPU per prompt: "
                    f"client {run.client_cpu_ms:.2f} ms, simulator {run.sim_cpu_ms:.2f} ms"
                ),
            )
        )
    best = max(runs, key=lambda run: run.rate)
    say(f"best {label} concurrency: {best.concurrency} ({best.rate:.1f} prompts/s)")
    return best


# ----------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class PipelineRun:
    kind: str
    concurrency: int | None  # the tier's `concurrency`; None: the config sets none
    seconds: float  # submit called -> job finished_at in the ledger
    prompts: int
    steady_rate: float  # between the 10th and the 90th percentile of prompts finishing
    sim_requests: int
    cpu_ms: dict[str, float]  # CPU per prompt: workers (together), simulator, postgres

    @property
    def rate(self) -> float:
        return self.prompts / self.seconds

    @property
    def in_flight(self) -> str:
        return "the default" if self.concurrency is None else str(self.concurrency)


def submit(path: Path, config: Path, engine: Any) -> int:
    from models import JobMode
    from producer.submit import submit_job
    from workers.app import app
    from workers.settings import load_settings

    settings = load_settings(config)
    submitted = submit_job(path, mode=JobMode.TEACHER, settings=settings, engine=engine, app=app)
    return submitted.job_id


def steady_rate(engine: Any, job_id: int) -> float:
    """Prompts/s in the middle 80 % of the job: the rate without start-up and tail."""
    from sqlalchemy import select
    from sqlmodel import Session, col

    from models import Prompt

    query = select(col(Prompt.finished_at)).where(col(Prompt.job_id) == job_id)
    with Session(engine) as session:
        times = sorted(t for t in session.execute(query).scalars() if t is not None)
    low, high = times[len(times) // 10], times[len(times) * 9 // 10]
    return (len(times) * 0.8) / max((high - low).total_seconds(), 1e-9)


class PySpy:
    """`py-spy record` on each worker during a run, for finding where the time goes
    (summarise with `python -m bench.pyspy_summary DIR`). It samples from outside the
    process, threads included, but costs CPU on a 2-core box: runs with it are for
    profiles, not for the figures."""

    def __init__(self, out_dir: Path | None, label: str, pids: list[int]) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        if out_dir is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        for index, pid in enumerate(pids):
            output = out_dir / f"{label}-worker{index}.txt"
            command = [str(Path(PYTHON).with_name("py-spy")), "record", "--pid", str(pid)]
            # --gil: only samples that hold the GIL, i.e. Python using a core, not threads
            # waiting on a socket or SQLite's lock; --nonblocking: never pause the worker.
            command += ["--format", "raw", "--rate", "100", "--gil", "--nonblocking"]
            command += ["--output", str(output)]
            self.processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for process in self.processes:
            process.wait(timeout=60)


class CpuMeter:
    """CPU seconds the pipeline's processes use between `start` and `stop`: the workers,
    the simulator and, on PostgreSQL, the server backends serving the run's database
    (backends that connect meanwhile count from zero)."""

    def __init__(self, pool: WorkerPool, sim: SimulatorProcess, url: str) -> None:
        self.pool, self.sim, self.url = pool, sim, url
        self.before: dict[str, dict[int, float]] = {}

    def snapshot(self) -> dict[str, dict[int, float]]:
        return {
            "workers": cpu_by_pid(self.pool.pids),
            "simulator": cpu_by_pid([self.sim.process.pid]),
            "postgres": cpu_by_pid(postgres_backend_pids(self.url)),
        }

    def start(self) -> None:
        self.before = self.snapshot()

    def stop(self) -> dict[str, float]:
        after = self.snapshot()
        return {
            name: sum(cpu - self.before[name].get(pid, 0.0) for pid, cpu in used.items())
            for name, used in after.items()
        }


def warm_up(pool: WorkerPool, config: Path, engine: Any, calls_in_flight: int | None) -> None:
    """A small job first, so the measured one finds every worker thread with its client
    made and its modules imported, as the direct baseline finds its connections open."""
    prompts = write_prompts(pool.workdir / "warm-up.jsonl", WORKERS * (calls_in_flight or 256))
    wait_for_job(engine, submit(prompts, config, engine), timeout_s=300)


def pipeline_run(
    sim: SimulatorProcess,
    kind: str,
    concurrency: int | None,
    count: int,
    py_spy_dir: Path | None,
) -> PipelineRun | None:
    workdir = scratch_dir(f"pipeline-{kind}-{concurrency or 'default'}")
    prompts = write_prompts(workdir / "prompts.jsonl", count)
    with database(kind, workdir) as url:
        if url is None:
            return None
        engine = fresh_engine(url)
        config = write_worker_config(
            workdir / "distillery.toml",
            base_url=sim.base_url,
            database_url=url,
            calls_in_flight=concurrency,
        )
        flush_bench_redis()
        with WorkerPool(workdir) as pool:
            pool.start(config, count=WORKERS)
            warm_up(pool, config, engine, concurrency)
            profiler = PySpy(py_spy_dir, f"{kind}-c{concurrency or 'default'}", pool.pids)
            meter = CpuMeter(pool, sim, url)
            sim.reset_stats()
            meter.start()
            started = utc_now()
            job_id = submit(prompts, config, engine)
            job = wait_for_job(engine, job_id, timeout_s=max(600, count / 5))
            cpu = meter.stop()
            profiler.stop()
        run = PipelineRun(
            kind,
            concurrency,
            (job.finished_at - started).total_seconds(),
            job.completed,
            steady_rate(engine, job_id),
            int(sim.stats()["by_model"].get(MODEL, {}).get("requests", 0)),
            {name: seconds / count * 1e3 for name, seconds in cpu.items()},
        )
        dispose_engine(url)
    return run


def cpu_text(cpu_ms: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu_ms.items() if ms > 0)


def report_run(run: PipelineRun, count: int) -> None:
    report(
        Figure(
            BENCH,
            f"pipeline {run.kind}, {WORKERS} workers x {run.in_flight} calls in flight",
            run.rate,
            "prompts/s",
            note=(
                f"{run.prompts}/{count} answered in {run.seconds:.1f} s, "
                f"steady {run.steady_rate:.1f} prompts/s, {run.sim_requests} calls; "
                f"CPU per prompt: {cpu_text(run.cpu_ms)}"
            ),
        )
    )


def best_pipeline_run(
    sim: SimulatorProcess, kind: str, sizes: Sizes, py_spy_dir: Path | None
) -> PipelineRun | None:
    runs: list[PipelineRun] = []
    for concurrency in sizes.worker_concurrencies:
        run = pipeline_run(sim, kind, concurrency, sizes.pipeline_prompts, py_spy_dir)
        if run is None:
            return None
        report_run(run, sizes.pipeline_prompts)
        runs.append(run)
    return max(runs, key=lambda run: run.rate)


def report_ratio(
    best: PipelineRun,
    direct: DirectRun,
    label: str = "direct AsyncOpenAI",
    target: float | None = TARGET_RATIO,
    which: str = "best",
) -> None:
    """The issue's ratio is against AsyncOpenAI; the one against the workers' own client
    says how much the pipeline costs on top of its calls (targeted out of the box only)."""
    ratio = best.rate / direct.rate
    pipeline_cpu = sum(best.cpu_ms.values())
    report(
        Figure(
            BENCH,
            f"pipeline {best.kind} ({which}: {WORKERS} workers x {best.in_flight} in flight)",
            best.rate,
            "prompts/s",
            baseline=direct.rate,
            baseline_name=f"{label} (best: {direct.concurrency} in flight)",
            ratio=ratio,
            ratio_name="pipeline/direct",
            target=f">= {target:.2f}" if target else "",
            met=ratio >= target if target else None,
            # When the cores are the limit, throughput goes as 1 / CPU per prompt: this
            # ratio is what the prompts/s ratio tends to on a busy 2-core machine.
            note=(
                f"CPU per prompt {pipeline_cpu:.2f} ms vs direct {direct.cpu_ms:.2f} ms "
                f"(direct/pipeline = {direct.cpu_ms / pipeline_cpu:.3f})"
            ),
        )
    )


def chosen_sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    if args.prompts:
        sizes = dataclasses.replace(sizes, pipeline_prompts=args.prompts)
    if args.calls_in_flight:
        sweep = tuple(int(n) for n in args.calls_in_flight.split(","))
        sizes = dataclasses.replace(sizes, worker_concurrencies=sweep)
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--py-spy", type=Path, help="record each worker with py-spy into DIR")
    parser.add_argument("--prompts", type=int, help="prompts per pipeline run")
    parser.add_argument("--calls-in-flight", help="per-worker sweep, e.g. 64,128")
    parser.add_argument(
        "--default-only", action="store_true", help="only the run with no `concurrency` set"
    )
    args = parser.parse_args(argv)
    sizes = chosen_sizes(args)
    kinds = ["sqlite"] if args.no_postgres else ["sqlite", "postgres"]
    print(f"== pipeline vs direct ({machine_summary()})", flush=True)
    with SimulatorProcess({"latency_ms": LATENCY_MS}, scratch_dir("pipeline-sim")) as sim:
        direct = best_direct_run(sim, sizes)
        lean_label = "direct aiohttp (the workers' client)"
        lean = best_direct_run(sim, sizes, _direct_lean_run, lean_label)
        for kind in kinds:
            default = pipeline_run(sim, kind, None, sizes.pipeline_prompts, args.py_spy)
            if default is None:
                continue
            report_run(default, sizes.pipeline_prompts)
            report_ratio(default, direct, which="out of the box")
            report_ratio(default, lean, lean_label, TARGET_LEAN_RATIO, which="out of the box")
            if args.default_only:
                continue
            best = best_pipeline_run(sim, kind, sizes, args.py_spy)
            if best is not None:
                report_ratio(best, direct)
                report_ratio(best, lean, lean_label, target=None)


if __name__ == "__main__":
    main()
