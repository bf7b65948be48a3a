"""The analysis commands (`cost`, `router eval`, `router calibrate`) run in-process, the
example config, a config whose input and output prices differ, and prompts each router
strategy sends to a known tier."""

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from producer.cli import main

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "distillery.example.toml"

# Input and output prices differ, so a mix-up of prompt and completion tokens shows.
PRICES = {"small": (0.1, 0.2), "medium": (0.3, 0.6), "frontier": (5.0, 15.0)}

EASY = "What is the capital of France? [easy]"  # rules: short question → small; sim: EASY
CODE = "Write a Python function that merges two sorted lists. [hard]"  # code → frontier
ANALYSIS = "Compare the trade-offs of SQLite and PostgreSQL for a small web shop."  # → medium


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run_json(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def priced_config(path: Path, *, base_url: str, database_url: str = "") -> Path:
    """Three tiers at PRICES on `base_url` (the simulator, or nothing for no llm)."""
    lines = [f'database_url = "{database_url}"'] if database_url else []
    for tier, (price_in, price_out) in PRICES.items():
        lines += [
            f"[tiers.{tier}]",
            f'base_url = "{base_url}"',
            f'model = "sim-{tier}"',
            f"input_per_1k = {price_in}",
            f"output_per_1k = {price_out}",
            "max_retries = 0",
            "timeout_s = 5",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
