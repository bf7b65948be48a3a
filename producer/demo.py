"""`distillery demo`: a whole teacher job on this machine with nothing installed.

The simulator runs on a free local port; the config, SQLite database and training files
go into one folder. Without REDIS_URL the broker is Celery's in-memory transport with a
worker thread in this process; with REDIS_URL a separate `distillery worker` process does
the work, exactly as in production.
"""

import functools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path

from rich.console import Console
from sqlalchemy.engine import Engine

from models import JobMode
from simulator import SimConfig, start_in_thread
from workers.settings import Settings

# The seed's illustrative prices, USD per 1K tokens.
DEMO_TIERS = {"small": 0.10, "medium": 0.30, "frontier": 5.00}


def demo_prompts() -> Path:
    return Path(str(resources.files("producer") / "data" / "demo_prompts.jsonl"))


def write_config(workdir: Path, base_url: str) -> Path:
    """A config whose tiers point at this run's simulator; reusable after the demo."""
    db = (workdir / "distillery.db").resolve()
    lines = [
        f'database_url = "sqlite:///{db}"',
        f'output_dir = "{(workdir / "output").resolve()}"',
        "",
    ]
    for tier, price in DEMO_TIERS.items():
        lines += [
            f"[tiers.{tier}]",
            f'base_url = "{base_url}"',
            f'model = "sim-{tier}"',
            f"input_per_1k = {price}",
            f"output_per_1k = {price}",
            "max_retries = 6",
            "backoff_base_s = 0.2",
            "",
        ]
    lines += ["[teacher]", 'tier = "frontier"', "temperature = 0.7", ""]
    path = workdir / "distillery.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def simulator_config() -> SimConfig:
    # Realistic enough to watch: ~0.3 s per call, and 2 % of calls fail with a 500 so the
    # retries show up in the attempts table.
    return SimConfig.tiered(latency_ms=300, latency_jitter_ms=200, error_rate=0.02)


@contextmanager
def separate_worker(config: Path) -> Iterator[None]:
    """With REDIS_URL set, the work happens in a real worker process."""
    env = {**os.environ, "DISTILLERY_CONFIG": str(config)}
    tiers = ",".join(DEMO_TIERS)
    command = [
        sys.executable,
        "-m",
        "producer.cli",
        "worker",
        "--tiers",
        tiers,
        "--loglevel",
        "WARNING",
    ]
    process = subprocess.Popen(command, env=env)
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def run_demo(workdir: Path, *, console: Console, out: Console) -> None:
    """A teacher job (answers → training file), then a routed job over the same prompts."""
    from producer import jobs

    workdir.mkdir(parents=True, exist_ok=True)
    with start_in_thread(simulator_config()) as sim:
        config = write_config(workdir, sim.base_url)
        settings, engine = _use_config(config)
        broker = "Redis" if settings.redis_url else "in-process"
        console.print(f"simulator at {sim.base_url}; broker: {broker}")
        with separate_worker(config) if settings.redis_url else nullcontext():
            submit = functools.partial(
                jobs.submit_and_maybe_wait,
                demo_prompts(),
                settings=settings,
                engine=engine,
                overrides={},
                wait=True,
                console=console,
            )
            console.print("\n[bold]1. teacher job[/]: every prompt to the frontier tier")
            teacher = submit(mode=JobMode.TEACHER, router=None, name="demo-teacher")
            jobs.print_summary(out, teacher)
            console.print("\n[bold]2. routed job[/]: the rules router picks a tier per prompt")
            routed = submit(mode=JobMode.ROUTE, router="rules", name="demo-route")
    print_routing(out, engine, routed["id"], settings)
    out.print(f"\ndatabase: {settings.database_url}")
    out.print("next: use the demo's config and look around:")
    out.print(f"  export DISTILLERY_CONFIG={config}")
    out.print(f"  distillery results {teacher['id']} --format csv | head")
    out.print(f"  distillery reduce {teacher['id']} --validation-fraction 0.1")
    out.print(f"  distillery report {routed['id']} --plot report.png")


def _use_config(config: Path) -> tuple[Settings, Engine]:
    from models import create_tables, get_engine
    from workers.settings import get_settings

    os.environ["DISTILLERY_CONFIG"] = str(config)
    os.environ.pop("DATABASE_URL", None)  # the demo's own SQLite file, named in its config
    get_settings.cache_clear()
    settings = get_settings()
    engine = get_engine(settings.database_url)
    create_tables(engine)
    return settings, engine


def print_routing(out: Console, engine: Engine, job_id: int, settings: Settings) -> None:
    from sqlmodel import Session

    from producer.report import build_report, print_report

    with Session(engine) as session:
        print_report(out, build_report(session, job_id, tiers=settings.tiers))
