"""Reducer: seconds and peak memory to turn a finished 100,000-row teacher job into a
fine-tuning file.

The job's rows are inserted directly in bulk (answers from the simulator's text generator,
plus rows the reducer must drop: failed, refusals, too short, duplicates). Each
measurement runs in a child process of its own, so its peak RSS (VmHWM in
/proc/self/status) is its own and not this process's; a second child per case runs under
tracemalloc for the Python-heap peak (slower, so its time is not reported). The baseline
reads the same rows with one plain SELECT into a list and writes the answered ones as
JSONL, naively.

Near-duplicate detection (issue 17) is measured the same way: the project's reducer with
`near_duplicates = 0.85` (MinHash-LSH over prompt and answer) against the same reducer
without it, in the same run (targets: <= 60 s, <= 600 MB).

    python -m bench.reducer [--rows 100000] [--quick] [--no-postgres] [--untraced]
"""

import argparse
import json
import os
import subprocess
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    REPO,
    TIER,
    Figure,
    database,
    dispose_engine,
    fresh_engine,
    machine_summary,
    mib,
    proc_status_kib,
    report,
    say,
    scratch_dir,
    timed,
    utc_now,
)

BENCH = "reducer"
TARGET_S = 10.0
TARGET_RSS_MIB = 300.0
NEAR_TARGET_S = 60.0
NEAR_TARGET_RSS_MIB = 600.0
INSERT_CHUNK = 5000
# Of every 100 rows: how many the reducer must drop, and why (the rest are kept).
REJECTS = {"failed": 2, "refusal": 1, "short": 1, "duplicate": 1, "near": 1}
REFUSAL = "I'm sorry, but I can't help with that."


# --------------------------------------------------------------------------- the job


def kind_of_row(idx: int) -> str:
    slot = idx % 100
    for kind, share in REJECTS.items():
        if slot < share:
            return kind
        slot -= share
    return "answered"


def row_content(idx: int) -> tuple[list[dict[str, str]], str | None]:
    """(messages, response) of row `idx`; a duplicate is exactly the (answered) row after
    it, so the second of the two is dropped."""
    from simulator.answers import answer

    kind = kind_of_row(idx)
    if kind == "duplicate":
        return row_content(idx + 1)
    if kind == "near":  # the next row shouted, without its commas: a near-duplicate
        messages, response = row_content(idx + 1)
        return messages, (response or "").upper().replace(",", "")
    prompt = f"Explain idea {idx} to a student, with an example."
    if kind == "failed":
        return [{"role": "user", "content": prompt}], None
    response = {"refusal": REFUSAL, "short": "OK."}.get(kind)
    if response is None:
        response = answer("sim-frontier", [("user", prompt)], None, None).content
    return [{"role": "user", "content": prompt}], response


def prompt_row(job_id: int, idx: int) -> dict[str, Any]:
    from models import PromptStatus

    messages, response = row_content(idx)
    return {
        "job_id": job_id,
        "idx": idx,
        "custom_id": f"p{idx}",
        "messages": messages,
        "status": PromptStatus.SUCCEEDED if response else PromptStatus.FAILED,
        "final_tier": TIER,
        "response": response,
        "error": None if response else "simulated failure",
        "prompt_tokens": 20,
        "completion_tokens": len(response or "") // 4,
        "finished_at": utc_now(),
    }


def row_chunks(job_id: int, rows: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, rows, INSERT_CHUNK):
        yield [prompt_row(job_id, idx) for idx in range(start, min(rows, start + INSERT_CHUNK))]


def insert_finished_job(engine: Any, rows: int) -> int:
    """A finished teacher job of `rows` prompts, inserted in bulk; returns its id."""
    from sqlalchemy import insert

    from models import Job, JobMode, JobStatus, Prompt, session_scope

    with session_scope(engine) as session:
        params = {"tier": TIER, "system_prompt": "You are a helpful assistant."}
        job = Job(name="reducer-bench", mode=JobMode.TEACHER, params=params, total=rows)
        job.status, job.finished_at = JobStatus.FINISHED, utc_now() + timedelta(seconds=1)
        session.add(job)
        session.flush()
        assert job.id is not None
        for chunk in row_chunks(job.id, rows):
            session.execute(insert(Prompt), chunk)
        job.completed = rows - rows * REJECTS["failed"] // 100
        job.failed = rows - job.completed
        return job.id


# --------------------------------------------------------------------- child processes


def reduce_with_project(url: str, job_id: int, out: Path) -> dict[str, Any]:
    from models import get_engine
    from workers.reducer import reduce_job
    from workers.settings import ReducerConfig

    result = reduce_job(engine=get_engine(url), job_id=job_id, out=out, config=ReducerConfig())
    record = result.record
    return {"examples": record.examples, "rejected": record.rejected}


def reduce_naively(url: str, job_id: int, out: Path) -> dict[str, Any]:
    """Everything in one list, then every answered row written as it is."""
    from sqlalchemy import select
    from sqlmodel import Session, col

    from models import Prompt, PromptStatus, get_engine

    columns = (col(Prompt.status), col(Prompt.messages), col(Prompt.response))
    query = select(*columns).where(col(Prompt.job_id) == job_id).order_by(col(Prompt.idx))
    with Session(get_engine(url)) as session:
        rows = session.execute(query).all()
    examples = 0
    with out.open("w", encoding="utf-8") as handle:
        for status, messages, response in rows:
            if status == PromptStatus.SUCCEEDED and response:
                assistant = {"role": "assistant", "content": response}
                handle.write(json.dumps({"messages": [*messages, assistant]}) + "\n")
                examples += 1
    return {"examples": examples}


def reduce_near_duplicates(url: str, job_id: int, out: Path) -> dict[str, Any]:
    from models import get_engine
    from workers.reducer import reduce_job
    from workers.settings import ReducerConfig

    config = ReducerConfig(near_duplicates=0.85)
    result = reduce_job(engine=get_engine(url), job_id=job_id, out=out, config=config)
    record = result.record
    return {"examples": record.examples, "rejected": record.rejected}


CASES = {
    "project": reduce_with_project,
    "naive": reduce_naively,
    "near_duplicates": reduce_near_duplicates,
}


def child_main(case: str, url: str, job_id: int, out: Path, traced: bool) -> None:
    """Run one case and print what it cost as one JSON line (the parent reads the last)."""
    import models  # noqa: F401  (the imports are the floor of RSS, not the work's)
    import workers.reducer  # noqa: F401

    floor_kib = proc_status_kib(os.getpid(), "VmRSS")
    if traced:
        tracemalloc.start()
    cpu = time.process_time()
    seconds, outcome = timed(lambda: CASES[case](url, job_id, out))
    costs = {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "floor_kib": floor_kib,
        # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so
        # a child would report this benchmark's own RSS if that were higher.
        "peak_kib": proc_status_kib(os.getpid(), "VmHWM"),
        "traced_peak": tracemalloc.get_traced_memory()[1] if traced else 0,
    }
    print(json.dumps({**outcome, **costs}))


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu_seconds: float  # this process's CPU: what the load on the machine does not inflate
    floor_mib: float  # RSS after imports, before the work
    peak_mib: float
    traced_peak_mib: float
    examples: int


def run_child(case: str, url: str, job_id: int, workdir: Path, *, traced: bool) -> dict[str, Any]:
    out = workdir / f"{case}{'-traced' if traced else ''}" / "train.jsonl"
    out.parent.mkdir()
    command = [PYTHON, "-m", "bench.reducer", "--child", case, "--url", url]
    command += ["--job", str(job_id), "--out", str(out)] + (["--traced"] if traced else [])
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"{case} child failed:\n{finished.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    return result


TRACED = True  # --untraced: skip the tracemalloc children (they take several times longer)


def measure(case: str, url: str, job_id: int, workdir: Path) -> Measured:
    plain = run_child(case, url, job_id, workdir, traced=False)
    traced = run_child(case, url, job_id, workdir, traced=True) if TRACED else {"traced_peak": 0}
    return Measured(
        seconds=plain["seconds"],
        cpu_seconds=plain["cpu_seconds"],
        floor_mib=mib(plain["floor_kib"]),
        peak_mib=mib(plain["peak_kib"]),
        traced_peak_mib=traced["traced_peak"] / 2**20,
        examples=plain["examples"],
    )


# ------------------------------------------------------------------------------ report


def report_case(kind: str, rows: int, project: Measured, naive: Measured) -> None:
    report(
        Figure(
            BENCH,
            f"reduce {rows:,} rows, {kind}: time",
            project.seconds,
            "s",
            baseline=naive.seconds,
            baseline_name="plain SELECT into a list + naive JSONL",
            ratio=project.seconds / naive.seconds,
            ratio_name="reducer/baseline",
            target=f"<= {TARGET_S:.0f} s",
            met=project.seconds <= TARGET_S,
            note=(
                f"CPU {project.cpu_seconds:.2f} s (baseline {naive.cpu_seconds:.2f} s); "
                f"{project.examples:,} examples kept (baseline wrote {naive.examples:,})"
            ),
        )
    )
    report(
        Figure(
            BENCH,
            f"reduce {rows:,} rows, {kind}: peak RSS",
            project.peak_mib,
            "MiB",
            baseline=naive.peak_mib,
            baseline_name="plain SELECT into a list + naive JSONL",
            ratio=project.peak_mib / naive.peak_mib,
            ratio_name="reducer/baseline",
            target=f"<= {TARGET_RSS_MIB:.0f} MB",
            met=project.peak_mib <= TARGET_RSS_MIB,
            note=(
                f"RSS after imports {project.floor_mib:.0f} MiB; tracemalloc peak "
                f"{project.traced_peak_mib:.1f} MiB (baseline {naive.traced_peak_mib:.1f} MiB)"
            ),
        )
    )


def run_one(kind: str, rows: int) -> None:
    workdir = scratch_dir(f"reducer-{kind}")
    with database(kind, workdir) as url:
        if url is None:
            return
        engine = fresh_engine(url)
        seconds, job_id = timed(lambda: insert_finished_job(engine, rows))
        say(f"{kind}: inserted {rows:,} rows in {seconds:.1f} s (setup, not measured)")
        dispose_engine(url)
        naive = measure("naive", url, job_id, workdir)
        project = measure("project", url, job_id, workdir)
        near = measure("near_duplicates", url, job_id, workdir)
    report_case(kind, rows, project, naive)
    report_near_duplicates(kind, rows, near, project)


def report_near_duplicates(kind: str, rows: int, near: Measured, plain: Measured) -> None:
    base = "the same reducer, near-duplicates off"
    for what, value, baseline, unit, target in (
        ("time", near.seconds, plain.seconds, "s", NEAR_TARGET_S),
        ("peak RSS", near.peak_mib, plain.peak_mib, "MiB", NEAR_TARGET_RSS_MIB),
    ):
        report(
            Figure(
                BENCH,
                f"reduce {rows:,} rows, {kind}, near-duplicates 0.85: {what}",
                value,
                unit,
                baseline=baseline,
                baseline_name=base,
                ratio=value / baseline,
                ratio_name="near-dup/plain",
                target=f"<= {target:.0f} {'s' if unit == 's' else 'MB'}",
                met=value <= target,
                note=(
                    f"CPU {near.cpu_seconds:.2f} s (plain {plain.cpu_seconds:.2f} s); "
                    f"{near.examples:,} examples kept (plain {plain.examples:,})"
                ),
            )
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 rows, for a smoke run")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--job", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--untraced", action="store_true", help="skip the tracemalloc runs")
    args = parser.parse_args(argv)
    global TRACED
    TRACED = not args.untraced
    if args.child:
        child_main(args.child, args.url, args.job, args.out, args.traced)
        return
    rows = 10_000 if args.quick else args.rows
    print(f"== reducer ({machine_summary()})", flush=True)
    for kind in ["sqlite"] if args.no_postgres else ["sqlite", "postgres"]:
        run_one(kind, rows)


if __name__ == "__main__":
    main()
