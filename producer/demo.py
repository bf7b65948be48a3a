"""`distillery demo`: a whole teacher job on this machine with nothing installed.

The simulator runs on a free local port; the config, SQLite database and training files
go into one folder. Without REDIS_URL the broker is Celery's in-memory transport with a
worker thread in this process; with REDIS_URL a separate `distillery worker` process does
the work, exactly as in production.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path

from rich.console import Console

from models import JobMode
from simulator import ModelBehaviour, SimConfig, start_in_thread

DEMO_TIER = "frontier"


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
    for tier, price in (("small", 0.10), ("medium", 0.30), ("frontier", 5.00)):
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
    lines += ["[teacher]", f'tier = "{DEMO_TIER}"', "temperature = 0.7", ""]
    path = workdir / "distillery.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def simulator_config() -> SimConfig:
    # Realistic enough to watch: ~0.3 s per call, and 2 % of calls fail with a 500 so the
    # retries show up in the attempts table.
    return SimConfig(default=ModelBehaviour(latency_ms=300, latency_jitter_ms=200, error_rate=0.02))


@contextmanager
def separate_worker(config: Path) -> Iterator[None]:
    """With REDIS_URL set, the work happens in a real worker process."""
    env = {**os.environ, "DISTILLERY_CONFIG": str(config)}
    command = [
        sys.executable,
        "-m",
        "producer.cli",
        "worker",
        "--tiers",
        DEMO_TIER,
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
    from producer import jobs

    workdir.mkdir(parents=True, exist_ok=True)
    with start_in_thread(simulator_config()) as sim:
        config = write_config(workdir, sim.base_url)
        os.environ["DISTILLERY_CONFIG"] = str(config)
        os.environ.pop("DATABASE_URL", None)  # the demo's own SQLite file, named in its config
        from models import create_tables, get_engine
        from workers.settings import get_settings

        get_settings.cache_clear()
        settings = get_settings()
        engine = get_engine(settings.database_url)
        create_tables(engine)
        console.print(
            f"simulator at {sim.base_url}; "
            f"broker: {'Redis' if settings.redis_url else 'in-process'}"
        )
        worker = separate_worker(config) if settings.redis_url else nullcontext()
        with worker:
            summary = jobs.submit_and_maybe_wait(
                demo_prompts(),
                mode=JobMode.TEACHER,
                router=None,
                settings=settings,
                engine=engine,
                name="demo",
                overrides={},
                wait=True,
                console=console,
            )
    jobs.print_summary(out, summary)
    out.print(f"\ndatabase: {settings.database_url}")
    out.print("next: use the demo's config and look around:")
    out.print(f"  export DISTILLERY_CONFIG={config}")
    out.print(f"  distillery results {summary['id']} --format csv | head")
    out.print(f"  distillery reduce {summary['id']} --validation-fraction 0.1")
