"""The report of a routed job as one PNG of three panels: where prompts were routed and where
they ended, latency per tier, and the routed cost against the all-frontier cost.

matplotlib is imported inside `plot_report`: it takes about a second to import, and every
other CLI command should start without paying for it."""

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

ROUTED_COLOUR = "#4C72B0"
FINAL_COLOUR = "#55A868"
P95_COLOUR = "#C44E52"
BAR_WIDTH = 0.38


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Write the report's figure to `path` (PNG) and return the path."""
    import matplotlib

    # Agg renders to files only: no display needed, so it works on servers and in CI.
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # A bare Figure (not pyplot) keeps no global state, so repeated reports leak nothing.
    figure = Figure(figsize=(16, 4.8), layout="constrained")
    tiers_axes, latency_axes, cost_axes = figure.subplots(1, 3)
    _plot_distribution(tiers_axes, report)
    _plot_latency(latency_axes, report)
    _plot_cost(cost_axes, report["cost"])
    job = report["job"]
    figure.suptitle(f"job {job['id']}: router {job['router'] or 'none'}, {job['status']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


Series = tuple[str, list[float], str]  # a name, one value per label, a colour


def distribution_series(report: dict[str, Any]) -> tuple[list[str], list[Series]]:
    """Prompts per tier, routed and final: the labels and the two series (also drawn as SVG
    by the dashboard, producer/ui/charts.py)."""
    routed, final = report["routed_distribution"], report["final_distribution"]
    tiers = list(dict.fromkeys([*routed, *final]))
    return tiers, [
        ("routed", [routed.get(t, {}).get("count", 0) for t in tiers], ROUTED_COLOUR),
        ("final", [final.get(t, {}).get("count", 0) for t in tiers], FINAL_COLOUR),
    ]


def latency_series(report: dict[str, Any]) -> tuple[list[str], list[Series]]:
    """p50 and p95 answer latency per tier. A tier without calls has no latency: NaN, drawn
    as an empty slot, not as a 0 ms bar that would read as "instant"."""
    latency = report["latency_ms"]
    tiers = list(latency)
    return tiers, [
        ("p50", [_stat(latency[t], "p50") for t in tiers], ROUTED_COLOUR),
        ("p95", [_stat(latency[t], "p95") for t in tiers], P95_COLOUR),
    ]


def cost_bars(cost: dict[str, Any]) -> list[tuple[str, float, str]]:
    """The routed cost beside the all-frontier cost: (label, USD, colour)."""
    return [
        ("routed", cost["routed_usd"], ROUTED_COLOUR),
        (f"all on {cost['frontier_tier']}", cost["all_frontier_usd"], P95_COLOUR),
    ]


def _plot_distribution(axes: "Axes", report: dict[str, Any]) -> None:
    _grouped_bars(axes, *distribution_series(report))
    axes.set_title("prompts per tier")
    axes.set_ylabel("prompts")


def _plot_latency(axes: "Axes", report: dict[str, Any]) -> None:
    _grouped_bars(axes, *latency_series(report))
    axes.set_title("answer latency per tier")
    axes.set_ylabel("ms")


def _stat(summary: dict[str, Any] | None, key: str) -> float:
    return float("nan") if summary is None else float(summary[key])


def _grouped_bars(axes: "Axes", labels: list[str], series: list[Series]) -> None:
    """One group of bars per label, one bar per series, side by side."""
    offsets = [(i - (len(series) - 1) / 2) * BAR_WIDTH for i in range(len(series))]
    for (name, values, colour), offset in zip(series, offsets, strict=True):
        positions = [x + offset for x in range(len(labels))]
        axes.bar(positions, values, BAR_WIDTH, label=name, color=colour)
    axes.set_xticks(range(len(labels)), labels)
    axes.legend()


def _plot_cost(axes: "Axes", cost: dict[str, Any]) -> None:
    labels, values, colours = zip(*cost_bars(cost), strict=True)
    bars = axes.bar(labels, values, color=colours)
    axes.bar_label(bars, labels=[f"${v:,.4f}" for v in values])
    axes.set_title(cost_title(cost))
    axes.set_ylabel("USD")


def cost_title(cost: dict[str, Any]) -> str:
    if cost["savings_pct"] is None:
        return "cost"
    return f"cost: {cost['savings_pct']:.1f} % saved"
