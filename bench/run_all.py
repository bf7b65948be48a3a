"""Run every benchmark, one process each, then print all their figures as one table.

    python -m bench.run_all [--quick] [--no-postgres] [--only submit,reducer] [--markdown F]

Each benchmark runs as `python -m bench.NAME` in a process of its own: the Celery app,
the engines and the memory high-water marks of one never leak into another. Figures are
collected through a JSON Lines file (bench.common.report appends to it). The whole run
takes about 12 minutes on a 2-core machine; --quick shrinks every size for a smoke run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import PYTHON, REPO, RESULTS_ENV, machine_summary

# Cheapest first, so a broken setup shows up early; rate_limit is the long one (~3 min).
BENCHMARKS = (
    "submit", "reducer", "ui", "worker_memory", "pipeline_vs_direct", "rate_limit", "batch",
)  # fmt: skip
TAKES_NO_POSTGRES = {"submit", "reducer", "ui", "pipeline_vs_direct", "batch"}


def command_for(name: str, quick: bool, no_postgres: bool) -> list[str]:
    command = [PYTHON, "-m", f"bench.{name}"]
    if quick:
        command.append("--quick")
    if no_postgres and name in TAKES_NO_POSTGRES:
        command.append("--no-postgres")
    return command


def run_benchmark(command: list[str], results: Path) -> int:
    started = time.monotonic()
    finished = subprocess.run(command, cwd=REPO, env={**os.environ, RESULTS_ENV: str(results)})
    print(f"   ({' '.join(command[2:])}: {time.monotonic() - started:.0f} s)\n", flush=True)
    return finished.returncode


def number(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: ""}[met]


def markdown_table(figures: list[dict[str, Any]]) -> str:
    header = (
        "| benchmark | figure | value | baseline | ratio | target | | load (1/5/15 min) |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {f['bench']} | {f['name']} | {number(f['value'])} {f['unit']} | "
        f"{number(f['baseline'])} {f['unit'] if f['baseline'] is not None else ''} "
        f"{f['baseline_name']} | {number(f['ratio'])} {f['ratio_name']} | {f['target']} | "
        f"{verdict(f['met'])} | {f['load']} |"
        for f in figures
    ]
    return "\n".join([header, *rows])


def read_figures(results: Path) -> list[dict[str, Any]]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    machine = machine_summary()
    print(f"machine: {machine}\n", flush=True)
    results = Path(tempfile.mkdtemp(prefix="distillery-bench-results-")) / "figures.jsonl"
    failed = [
        name
        for name in chosen
        if run_benchmark(command_for(name, args.quick, args.no_postgres), results) != 0
    ]
    table = markdown_table(read_figures(results))
    print(f"machine at start: {machine}\nmachine at end:   {machine_summary()}\n\n{table}")
    if args.markdown:
        args.markdown.write_text(f"machine: {machine}\n\n{table}\n", encoding="utf-8")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
