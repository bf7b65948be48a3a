"""Submit: seconds to validate, store and enqueue 100,000 prompts, and where they go.

`producer.submit.submit_job` runs as `distillery submit` runs it (the default
`enqueue_batch` prompt ids per message) on SQLite and on a fresh PostgreSQL database. Its
stages are timed by wrapping the functions it looks up in its module, so one run gives
both the total and the breakdown. The baseline enqueues the way `task.delay()` does, one
`app.send_task` per prompt with no shared producer, on a sample, extrapolated to the whole
job. A reference row sends one id per message over the project's shared producer, to
tell what batching buys from what reusing the producer buys.

    python -m bench.submit [--prompts 100000] [--sample 5000] [--quick] [--no-postgres]
"""

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    TIER,
    Figure,
    database,
    dispose_engine,
    flush_bench_redis,
    fresh_engine,
    machine_summary,
    report,
    say,
    scratch_dir,
    write_prompts,
    write_worker_config,
)

BENCH = "submit"
TARGET_S = 20.0
# submit_job's steps as its module names them; fit_to_context is newer, timed if present.
STAGES = (
    "read_prompts",
    "fit_to_context",
    "prompt_rows",
    "create_job",
    "enqueue_unfinished",
    "enqueue",
)


@dataclass
class StageClock:
    """Start and end of every call to the wrapped functions, by name."""

    calls: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.calls.setdefault(name, []).append((started, time.perf_counter()))

        return timed

    def seconds(self, name: str) -> float:
        return sum(end - start for start, end in self.calls.get(name, []))

    def first_start(self, name: str) -> float:
        return self.calls[name][0][0]

    def last_end(self, name: str) -> float:
        return self.calls[name][-1][1]


@contextmanager
def stages_timed(clock: StageClock) -> Iterator[None]:
    """Time submit_job's stages: it looks these up in its module's globals at call time."""
    import producer.submit as module

    originals = {name: getattr(module, name) for name in STAGES if hasattr(module, name)}
    for name, function in originals.items():
        setattr(module, name, clock.wrap(name, function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(module, name, function)


@dataclass(frozen=True)
class Breakdown:
    total: float
    cpu: float  # this process's CPU seconds (not the database's or Redis's)
    read: float
    context_check: float
    prepare_rows: float
    insert: float  # create_job and the commit that follows it
    select_ids: float  # enqueue_unfinished's query of what is left to send
    publish: float

    @property
    def other(self) -> float:
        parts = (self.read, self.context_check, self.prepare_rows, self.insert)
        return self.total - sum(parts) - self.select_ids - self.publish

    def text(self) -> str:
        return (
            f"read/validate {self.read:.2f} s, context check {self.context_check:.2f} s, "
            f"rows {self.prepare_rows:.2f} s, "
            f"insert+commit {self.insert:.2f} s, select ids {self.select_ids:.2f} s, "
            f"enqueue {self.publish:.2f} s, other {self.other:.2f} s; "
            f"producer CPU {self.cpu:.2f} s"
        )


def breakdown(clock: StageClock, total: float, cpu: float) -> Breakdown:
    enqueue_all = clock.seconds("enqueue_unfinished")
    return Breakdown(
        total=total,
        cpu=cpu,
        read=clock.seconds("read_prompts"),
        context_check=clock.seconds("fit_to_context"),
        prepare_rows=clock.seconds("prompt_rows"),
        insert=clock.first_start("enqueue_unfinished") - clock.first_start("create_job"),
        select_ids=enqueue_all - clock.seconds("enqueue"),
        publish=clock.seconds("enqueue"),
    )


def submit_timed(path: Path, config: Path, engine: Any) -> tuple[int, int, Breakdown]:
    """(job id, the enqueue_batch it used, the breakdown) of one `submit_job`."""
    from models import JobMode
    from producer.submit import submit_job
    from workers.app import app
    from workers.settings import load_settings

    settings = load_settings(config)
    clock = StageClock()
    with stages_timed(clock):
        started, cpu = time.perf_counter(), time.process_time()
        submitted = submit_job(
            path, mode=JobMode.TEACHER, settings=settings, engine=engine, app=app
        )
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
    return submitted.job_id, settings.enqueue_batch, breakdown(clock, total, cpu)


def job_prompt_ids(engine: Any, job_id: int) -> list[int]:
    from sqlalchemy import select
    from sqlmodel import Session, col

    from models import Prompt

    query = select(col(Prompt.id)).where(col(Prompt.job_id) == job_id).order_by(col(Prompt.idx))
    with Session(engine) as session:
        return [int(pid) for pid in session.execute(query).scalars()]


def naive_enqueue_seconds(prompt_ids: list[int]) -> float:
    """One message per prompt the way `task.delay()` sends it: each call acquires a
    producer (and its connection) from the pool on its own."""
    from workers.app import ANSWER_TASK, app

    started = time.perf_counter()
    for prompt_id in prompt_ids:
        app.send_task(ANSWER_TASK, ([prompt_id], TIER), queue=TIER)
    return time.perf_counter() - started


def unbatched_enqueue_seconds(prompt_ids: list[int]) -> float:
    """The project's `enqueue` (one shared producer) with one id per message."""
    from producer.submit import enqueue
    from workers.app import ANSWER_TASK, app

    started = time.perf_counter()
    enqueue(app, ANSWER_TASK, prompt_ids, queue=TIER, batch=1, extra_args=(TIER,))
    return time.perf_counter() - started


def report_submit(kind: str, count: int, parts: Breakdown, naive_enqueue: float) -> None:
    naive_total = parts.total - parts.publish + naive_enqueue
    report(
        Figure(
            BENCH,
            f"submit {count:,} prompts, {kind}",
            parts.total,
            "s",
            baseline=naive_total,
            baseline_name="same with one send_task per prompt (extrapolated)",
            ratio=parts.total / naive_total,
            ratio_name="submit/baseline",
            target=f"<= {TARGET_S:.0f} s",
            met=parts.total <= TARGET_S,
            note=parts.text(),
        )
    )


def report_enqueue(
    kind: str, count: int, batch: int, parts: Breakdown, naive: float, unbatched: float
) -> None:
    report(
        Figure(
            BENCH,
            f"enqueue {count:,} ids, {kind}, project (enqueue_batch={batch}, one producer)",
            parts.publish,
            "s",
            baseline=naive,
            baseline_name="one send_task per prompt (extrapolated)",
            ratio=parts.publish / naive,
            ratio_name="project/baseline",
            note=f"one producer, enqueue_batch=1: {unbatched:.2f} s (extrapolated)",
        )
    )


def run_one(kind: str, prompts: Path, count: int, sample: int) -> None:
    workdir = scratch_dir(f"submit-{kind}")
    with database(kind, workdir) as url:
        if url is None:
            return
        engine = fresh_engine(url)
        config = write_worker_config(
            workdir / "distillery.toml", base_url="http://127.0.0.1:9/v1", database_url=url
        )
        flush_bench_redis()
        job_id, batch, parts = submit_timed(prompts, config, engine)
        flush_bench_redis()  # messages nobody will consume
        ids = job_prompt_ids(engine, job_id)
        scale = len(ids) / min(sample, len(ids))
        naive = naive_enqueue_seconds(ids[:sample]) * scale
        flush_bench_redis()
        unbatched = unbatched_enqueue_seconds(ids[:sample]) * scale
        flush_bench_redis()
        dispose_engine(url)
    report_submit(kind, count, parts, naive)
    report_enqueue(kind, count, batch, parts, naive, unbatched)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=5_000, help="baseline sample size")
    parser.add_argument("--quick", action="store_true", help="10,000 prompts, sample 1,000")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    count, sample = (10_000, 1_000) if args.quick else (args.prompts, args.sample)
    print(f"== submit ({machine_summary()})", flush=True)
    prompts = write_prompts(scratch_dir("submit-file") / "prompts.jsonl", count)
    say(f"{prompts}: {count:,} prompts, {prompts.stat().st_size / 1e6:.1f} MB")
    for kind in ["sqlite"] if args.no_postgres else ["sqlite", "postgres"]:
        run_one(kind, prompts, count, sample)


if __name__ == "__main__":
    main()
