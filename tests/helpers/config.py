"""Worker configs for tests: the three test tiers, their prices, and a config file on a
given server and database."""

from pathlib import Path
from typing import Any

TIERS = ("small", "medium", "frontier")
PRICES = {"small": 0.1, "medium": 0.3, "frontier": 5.0}


def write_config(
    path: Path,
    *,
    base_url: str,
    database_url: str,
    extra: str = "",
    enqueue_batch: int | None = None,
    **tier: Any,
) -> Path:
    """A worker config: the three test tiers on the given server."""
    tier_lines = "".join(f"{k} = {_toml(v)}\n" for k, v in tier.items())
    top = f'database_url = "{database_url}"\noutput_dir = "{path.parent / "output"}"\n'
    if enqueue_batch is not None:
        top += f"enqueue_batch = {enqueue_batch}\n"
    blocks = [top] + [
        f'[tiers.{t}]\nbase_url = "{base_url}"\nmodel = "sim-{t}"\n'
        f"input_per_1k = {PRICES[t]}\noutput_per_1k = {PRICES[t]}\n"
        f"backoff_base_s = 0.05\n{tier_lines}"
        for t in TIERS
    ]
    path.write_text("\n".join(blocks) + "\n" + extra, encoding="utf-8")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value).replace("'", '"')
