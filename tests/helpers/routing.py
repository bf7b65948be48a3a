"""Route jobs for tests: prompts whose routing and final tier are known, a rules-router
config on the simulator, and one worker process per tier queue."""

from pathlib import Path
from typing import Any

from simulator import RunningSimulator
from tests.helpers.config import write_config

# (prompt, routed tier by the rules router, expected final tier)
CASES = [
    ("[easy] What is the capital of France?", "small", "small"),
    ("[hard] What is the integral of x^x?", "small", "frontier"),
    ("[easy] Write a python function that reverses a list.", "frontier", "frontier"),
    (
        "[hard] Compare the trade-offs of microservices and monoliths for a bank.",
        "medium",
        "frontier",
    ),
    ("[easy] Compare the trade-offs of tea and coffee for breakfast.", "medium", "medium"),
]


def start_tier_workers(workers: Any, config: Path) -> None:
    workers.start(config, tiers="small", concurrency=4)
    workers.start(config, tiers="medium", concurrency=4)
    workers.start(config, tiers="frontier", concurrency=4)


def route_config(tmp_path: Path, sim: RunningSimulator, database_url: str, **tier: Any) -> Path:
    return write_config(
        tmp_path / "distillery.toml",
        base_url=sim.base_url,
        database_url=database_url,
        extra='[router]\nstrategy = "rules"\nfallback = ["frontier"]\nconfidence_threshold = 0.8\n',
        **tier,
    )
