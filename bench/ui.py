"""The dashboard: how long each page of a 100,000-prompt route job takes to load, against
the same page of a 1,000-prompt job in the same run (the ratio says how it scales).

The jobs are written straight into the ledger through the models (tests.helpers.ledger_job:
prompts, one attempt per call, a fallback per escalation), then `distillery ui` serves them
as a separate process and each page is fetched over HTTP, whole, several times; the median
is reported. Target: every page under a second. A job's figures (the report, the charts)
are computed once per job version (producer.ui.cache): the job page comes at once and
fetches them as a fragment, so that fragment's first load is the one computation, and is
reported as such.

    python -m bench.ui [--prompts 100000] [--quick] [--no-postgres]
"""

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import (
    PYTHON,
    REPO,
    Figure,
    database,
    dispose_engine,
    free_port,
    fresh_engine,
    machine_summary,
    report,
    say,
    scratch_dir,
    stop_process,
    timed,
)

BENCH = "ui"
TARGET_S = 1.0
BASELINE_PROMPTS = 1000
FETCHES = 5


def pages(job_id: int, prompts: int, prompt_id: int) -> dict[str, str]:
    deep = max(0, prompts - 100)
    return {
        "jobs list": "/ui/jobs",
        "job page": f"/ui/jobs/{job_id}",
        # What the job page fetches when its figures were never computed (report, charts).
        "job figures (the page's fragment)": f"/ui/jobs/{job_id}/aggregates",
        "answers, first page": f"/ui/jobs/{job_id}/prompts",
        "answers, a late page": f"/ui/jobs/{job_id}/prompts?after={deep}",
        "answers, failed only": f"/ui/jobs/{job_id}/prompts?status=failed",
        "answers, fell back on small": f"/ui/jobs/{job_id}/prompts?fell_back=yes&routed=small",
        "answers, text search": f"/ui/jobs/{job_id}/prompts?q=from+medium",
        # The worst case: a search that matches nothing reads every row of the job.
        "answers, text search matching nothing": f"/ui/jobs/{job_id}/prompts?q=no+such+text",
        "a prompt": f"/ui/prompts/{prompt_id}",
    }


def write_config(path: Path, url: str) -> Path:
    prices = {"small": 0.1, "medium": 0.3, "frontier": 5.0}
    tiers = "".join(
        f'[tiers.{t}]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "sim-{t}"\n'
        f"input_per_1k = {p}\noutput_per_1k = {p}\n"
        for t, p in prices.items()
    )
    path.write_text(f'database_url = "{url}"\n{tiers}', encoding="utf-8")
    return path


def start_ui(config: Path, log: Path) -> tuple["subprocess.Popen[bytes]", str]:
    import httpx

    port = free_port()
    env = {**os.environ, "DISTILLERY_CONFIG": str(config)}
    env.pop("DISTILLERY_GATEWAY_KEYS", None)
    process = subprocess.Popen(
        [PYTHON, "-m", "producer.cli", "ui", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(url + "/ui/jobs", timeout=2)
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the dashboard did not start: {log.read_text()[-2000:]}")


def load_times(url: str, paths: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Per page: the seconds of its first load (nothing computed yet) and the median of
    FETCHES loads after it (the job page's aggregates kept: producer.ui.cache)."""
    import httpx

    times = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, path in paths.items():
            first, _ = timed(lambda p=path: client.get(p).raise_for_status())
            again = [
                timed(lambda p=path: client.get(p).raise_for_status())[0] for _ in range(FETCHES)
            ]
            times[name] = (first, statistics.median(again))
    return times


def first_prompt_id(engine: object, job_id: int) -> int:
    from sqlalchemy import func, select
    from sqlmodel import Session

    from models.tables import PROMPTS

    with Session(engine) as session:  # type: ignore[call-overload]
        query = select(func.min(PROMPTS.c.id)).where(PROMPTS.c.job_id == job_id)
        return int(session.execute(query).scalar_one()) + 7


def run(kind: str, prompts: int) -> None:
    from tests.helpers.ledger_job import write_route_job

    work = scratch_dir(f"ui-{kind}")
    with database(kind, work) as url:
        assert url is not None
        engine = fresh_engine(url)
        say(f"{kind}: writing a {BASELINE_PROMPTS:,}-prompt and a {prompts:,}-prompt job")
        small = write_route_job(engine, BASELINE_PROMPTS, seed=1)
        seconds, big = timed(lambda: write_route_job(engine, prompts, seed=2))
        say(f"{kind}: {prompts:,} prompts written in {seconds:.1f} s")
        if kind == "postgres":
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")  # what autovacuum does soon after a bulk load
        process, ui = start_ui(write_config(work / "ui.toml", url), work / "ui.log")
        try:
            small_pages = pages(small.job_id, small.prompts, first_prompt_id(engine, small.job_id))
            big_pages = pages(big.job_id, big.prompts, first_prompt_id(engine, big.job_id))
            base, load = load_times(ui, small_pages), load_times(ui, big_pages)
        finally:
            stop_process(process)
            dispose_engine(url)
    for name, (first, again) in load.items():
        for which, value, baseline in (
            ("first load", first, base[name][0]),
            ("load", again, base[name][1]),
        ):
            report(
                Figure(
                    BENCH,
                    f"{kind}: {name}, {which}, {prompts:,}-prompt job",
                    value * 1000,
                    "ms",
                    baseline=baseline * 1000,
                    baseline_name=f"{BASELINE_PROMPTS:,}-prompt job",
                    ratio=value / baseline if baseline else None,
                    ratio_name="big/small",
                    target=f"< {TARGET_S * 1000:.0f} ms",
                    met=value < TARGET_S,
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 prompts")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    prompts = 10_000 if args.quick else args.prompts
    print(machine_summary(), flush=True)
    for kind in ("sqlite",) if args.no_postgres else ("sqlite", "postgres"):
        run(kind, prompts)


if __name__ == "__main__":
    main()
