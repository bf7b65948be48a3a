"""The response cache's cost: submit → done of a teacher job whose every prompt the cache
already answers, against the same job's prompts answered by calls, in the same run.

The cache is filled directly (one job's prompts, attempts and response_cache rows, as the
ledger writes them, with the keys the workers compute) so that a 100,000-prompt cached job
does not first need 100,000 simulator calls. Then:

* lookups/s: `lookup_answers` over every key of the file (chunks of 500, one indexed query
  each, what a batch path would do), at the filled size and at a tenth of it — O(1) per
  prompt means about the same rate at both sizes;
* cached job: `submit` of the whole file and workers until the job is finished: every
  prompt an attempt with status cached, no call (checked on the simulator's counter);
* baseline: an uncached job of `--sample` other prompts against the simulator (latency
  `--latency-ms`), the same workers, its prompts per second.

    python -m bench.cache [--prompts 100000] [--sample 5000] [--postgres] [--quick]
"""

import argparse
import random
import time
from pathlib import Path
from typing import Any

from bench.common import (
    TIER,
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

BENCH = "cache"


def fill_cache(engine: Any, settings: Any, path: Path) -> list[str]:
    """A finished job of the file's prompts with one paid attempt and one cache row each;
    returns the keys, as the workers will compute them for a new job of the same file."""
    from sqlalchemy import insert

    from models import JobMode, session_scope
    from models.queries import create_job
    from models.response_cache import store_responses
    from models.tables import ATTEMPTS, PROMPTS
    from producer.readers import read_prompts
    from producer.submit import job_settings, prompt_rows
    from workers.attempts import attempt_from_completion
    from workers.chat import Completion
    from workers.response_cache import cache_key, cache_row

    prompts = read_prompts(path)
    job = job_settings(JobMode.TEACHER, settings, router=None, overrides={})
    tier = settings.require_tier(TIER)
    with session_scope(engine) as session:
        stored = create_job(
            session=session,
            mode=JobMode.TEACHER,
            prompts=prompt_rows(prompts),
            name="cache-fill",
            router=None,
            params=job.to_params(),
            source=str(path),
        )
        job_id = stored.id
    keys = [cache_key(tier, job.request(p.messages)) for p in prompts]
    with engine.begin() as conn:
        ids = conn.execute(
            PROMPTS.select().with_only_columns(PROMPTS.c.id).where(PROMPTS.c.job_id == job_id)
        ).scalars()
        prompt_ids = sorted(ids)
        answer = Completion("A cached answer. " * 8, 30, 40, None, 200.0, "stop")
        for start in range(0, len(prompt_ids), 5000):
            chunk = prompt_ids[start : start + 5000]
            rows = [attempt_from_completion(pid, tier, answer) for pid in chunk]
            returning = insert(ATTEMPTS).returning(ATTEMPTS.c.id, sort_by_parameter_order=True)
            attempt_ids = list(conn.execute(returning, rows).scalars())
            cache_rows = [
                {**cache_row(tier, key, answer, row["cost_usd"]), "attempt_id": attempt_id}
                for key, row, attempt_id in zip(
                    keys[start : start + 5000], rows, attempt_ids, strict=True
                )
            ]
            store_responses(conn=conn, rows=cache_rows)
    return keys


def lookups_per_second(engine: Any, keys: list[str]) -> float:
    from workers.response_cache import lookup_answers

    sample = random.Random(0).sample(keys, len(keys))
    started = time.perf_counter()
    found = lookup_answers(engine, sample)
    elapsed = time.perf_counter() - started
    assert len(found) == len(set(keys)), (len(found), len(keys))
    return len(keys) / elapsed


def run_job(engine: Any, path: Path, config: Path, timeout_s: float) -> tuple[float, Any]:
    from models import JobMode
    from producer.submit import submit_job
    from workers.app import app
    from workers.settings import load_settings

    started = time.perf_counter()
    submitted = submit_job(
        path, mode=JobMode.TEACHER, settings=load_settings(config), engine=engine, app=app
    )
    job = wait_for_job(engine, submitted.job_id, timeout_s=timeout_s, poll_s=0.5)
    return time.perf_counter() - started, job


def cache_hits(engine: Any, job_id: int) -> int:
    from sqlalchemy import func, select

    from models.tables import ATTEMPTS, PROMPTS

    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(ATTEMPTS.join(PROMPTS, PROMPTS.c.id == ATTEMPTS.c.prompt_id))
                .where(PROMPTS.c.job_id == job_id, ATTEMPTS.c.status == "cached")
            ).scalar_one()
        )


def bench(kind: str, prompts: int, sample: int, latency_ms: float, workers: int) -> None:
    from workers.settings import load_settings

    workdir = scratch_dir(f"cache-{kind}")
    with database(kind, workdir) as url:
        if url is None:
            return
        engine = fresh_engine(url)
        with SimulatorProcess({"latency_ms": latency_ms}, workdir) as sim:
            config = write_worker_config(
                workdir / "worker.toml", base_url=sim.base_url, database_url=url
            )
            settings = load_settings(config)
            small = write_prompts(workdir / "small.jsonl", prompts // 10)
            say(f"{kind}: filling the cache with {prompts // 10:,} answers")
            small_keys = fill_cache(engine, settings, small)
            small_rate = lookups_per_second(engine, small_keys)
            whole = write_prompts(workdir / "whole.jsonl", prompts)
            say(f"{kind}: filling the cache with {prompts:,} answers")
            keys = fill_cache(engine, settings, whole)
            rate = lookups_per_second(engine, keys)
            report(
                Figure(
                    BENCH,
                    f"{kind}: cache lookups at {len(set(keys)):,} rows",
                    rate,
                    "keys/s",
                    baseline=small_rate,
                    baseline_name=f"at {len(set(small_keys)):,} rows",
                    ratio=rate / small_rate,
                    ratio_name="large/small (1.0: O(1) per key)",
                )
            )
            flush_bench_redis()
            with WorkerPool(workdir) as pool:
                pool.start(config, count=workers)
                calls = sim.stats()["requests"]
                say(f"{kind}: submit → done of a fully cached {prompts:,}-prompt job")
                cached_s, job = run_job(engine, whole, config, timeout_s=3600)
                assert sim.stats()["requests"] == calls, "a cached job made calls"
                hits = cache_hits(engine, job.id)
                assert hits == prompts == job.completed, (hits, job.completed)
                fresh = scratch_dir("fresh") / "fresh.jsonl"
                write_fresh(fresh, sample)
                say(f"{kind}: baseline, {sample:,} prompts answered by calls")
                called_s, called = run_job(engine, fresh, config, timeout_s=3600)
                assert called.completed == sample
            cached_rate, called_rate = prompts / cached_s, sample / called_s
            report(
                Figure(
                    BENCH,
                    f"{kind}: fully cached {prompts:,}-prompt job, submit → done",
                    cached_rate,
                    "prompts/s",
                    baseline=called_rate,
                    baseline_name=f"{sample:,} prompts by calls at {latency_ms:g} ms",
                    ratio=cached_rate / called_rate,
                    ratio_name="cached/called",
                    note=f"{cached_s:.1f} s in all; {workers} workers",
                )
            )
        dispose_engine(url)


def write_fresh(path: Path, count: int) -> None:
    import json

    with path.open("w", encoding="utf-8") as handle:
        for number in range(count):
            handle.write(json.dumps({"prompt": f"A fresh question, number {number}."}) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=5_000)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL too")
    parser.add_argument("--quick", action="store_true", help="10,000 prompts, 1,000 sample")
    args = parser.parse_args(argv)
    prompts, sample = (10_000, 1_000) if args.quick else (args.prompts, args.sample)
    print(machine_summary(), flush=True)
    for kind in ("sqlite", "postgres") if args.postgres else ("sqlite",):
        bench(kind, prompts, sample, args.latency_ms, args.workers)


if __name__ == "__main__":
    main()
