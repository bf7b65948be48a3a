"""Charts as inline SVG, drawn on the server: no JavaScript library, no external asset, and
the page works offline. The report's charts take their series from `producer.report_plot`
(the same functions `distillery report --plot` draws with matplotlib), so the browser and
the PNG show the same numbers.

Every text that reaches the SVG (tier names come from the config and the rows) is escaped."""

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

from producer.report_plot import (
    FINAL_COLOUR,
    P95_COLOUR,
    ROUTED_COLOUR,
    Series,
    cost_bars,
    cost_title,
    distribution_series,
    latency_series,
)

WIDTH, HEIGHT = 420, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 28, 44


def _frame(title: str, body: list[str], *, label: str) -> Markup:
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {WIDTH} '
        f'{HEIGHT}" width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f'<text class="title" x="{WIDTH / 2}" y="16" text-anchor="middle">{escape(title)}</text>',
        *body,
        "</svg>",
    ]
    return Markup("".join(parts))


def _nice_max(value: float) -> float:
    """A round axis top at or above `value` (1, 2 or 5 times a power of ten)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _axis(top: float, unit: str) -> list[str]:
    """The value axis: four gridlines with their values."""
    plot_h = HEIGHT - TOP - BOTTOM
    lines = []
    for k in range(5):
        value = top * k / 4
        y = HEIGHT - BOTTOM - plot_h * k / 4
        lines.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_short(value))}</text>"
        )
    lines.append(f'<text class="unit" x="4" y="{TOP - 8}">{escape(unit)}</text>')
    return lines


def _short(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}" if value >= 1 or value == 0 else f"{value:.2g}"


def grouped_bars(
    title: str, labels: Sequence[str], series: Sequence[Series], *, unit: str
) -> Markup:
    """One group of bars per label, one bar per series; a NaN value draws no bar."""
    values = [v for _, vs, _ in series for v in vs if math.isfinite(v)]
    top = _nice_max(max(values, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group_w = plot_w / max(1, len(labels))
    bar_w = min(48.0, group_w * 0.8 / max(1, len(series)))
    body = _axis(top, unit)
    for i, label in enumerate(labels):
        x0 = LEFT + i * group_w + (group_w - bar_w * len(series)) / 2
        for j, (name, vs, colour) in enumerate(series):
            value = vs[i]
            if not math.isfinite(value):
                continue
            h = plot_h * value / top
            body.append(
                f'<rect x="{x0 + j * bar_w:.1f}" y="{HEIGHT - BOTTOM - h:.1f}" '
                f'width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{escape(name)} {escape(label)}: {escape(_short(value))}</title></rect>"
            )
        body.append(
            f'<text class="label" x="{LEFT + (i + 0.5) * group_w:.1f}" y="{HEIGHT - BOTTOM + 14}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    body.extend(_legend([(name, colour) for name, _, colour in series]))
    return _frame(title, body, label=title)


def _legend(entries: Sequence[tuple[str, str]]) -> list[str]:
    parts, x = [], LEFT
    for name, colour in entries:
        y = HEIGHT - 12
        parts.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text class="legend" x="{x + 14}" y="{y}">{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    return parts


def tier_distribution(report: dict[str, Any]) -> Markup:
    return grouped_bars("prompts per tier", *distribution_series(report), unit="prompts")


def tier_latency(report: dict[str, Any]) -> Markup:
    return grouped_bars("answer latency per tier", *latency_series(report), unit="ms")


def cost_vs_frontier(report: dict[str, Any]) -> Markup:
    bars = cost_bars(report["cost"])
    labels = [label for label, _, _ in bars]
    # One series per bar, each with a value in its own slot only: two colours, one group each.
    series: list[Series] = [
        (label, [value if k == n else math.nan for k in range(len(bars))], colour)
        for n, (label, value, colour) in enumerate(bars)
    ]
    return grouped_bars(cost_title(report["cost"]), labels, series, unit="USD")


def counts_bars(title: str, counts: dict[str, int], *, unit: str) -> Markup:
    """One bar per key (statuses, fallback reasons, rejection reasons)."""
    labels = list(counts)
    return grouped_bars(
        title, labels, [(unit, [float(counts[k]) for k in labels], ROUTED_COLOUR)], unit=unit
    )


def line_chart(
    title: str,
    lines: Sequence[tuple[str, Sequence[tuple[float, float]], str]],
    *,
    unit: str,
    x_labels: tuple[str, str],
) -> Markup:
    """Lines of (x, y) points over a shared x range; `x_labels` names its two ends."""
    points = [p for _, pts, _ in lines for p in pts]
    if not points:
        return _frame(
            title, ['<text class="empty" x="50%" y="50%">no data yet</text>'], label=title
        )
    x_min = min(x for x, _ in points)
    x_span = (max(x for x, _ in points) - x_min) or 1.0
    top = _nice_max(max(y for _, y in points))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    body = _axis(top, unit)
    for _name, pts, colour in lines:
        path = " ".join(
            f"{LEFT + plot_w * (x - x_min) / x_span:.1f},{HEIGHT - BOTTOM - plot_h * y / top:.1f}"
            for x, y in pts
        )
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
    first, last = x_labels
    body.append(
        f'<text class="label" x="{LEFT}" y="{HEIGHT - BOTTOM + 14}">{escape(first)}</text>'
        f'<text class="label" x="{WIDTH - RIGHT}" y="{HEIGHT - BOTTOM + 14}" '
        f'text-anchor="end">{escape(last)}</text>'
    )
    body.extend(_legend([(name, colour) for name, _, colour in lines]))
    return _frame(title, body, label=title)


def progress_over_time(curve: Sequence[tuple[datetime, int]], started: datetime) -> Markup:
    """Prompts finished against seconds since the job was created."""
    points = [(0.0, 0.0)] + [((at - started).total_seconds(), float(n)) for at, n in curve]
    end = points[-1][0] if curve else 0.0
    return line_chart(
        "prompts finished over time",
        [("finished", points, FINAL_COLOUR)] if curve else [],
        unit="prompts",
        x_labels=("0 s", f"{end:,.1f} s"),
    )


def loss_curve(curve: Sequence[dict[str, Any]]) -> Markup:
    """A training run's loss per logged step: training, and validation where measured."""
    lines = []
    for key, name, colour in (
        ("train_loss", "training", ROUTED_COLOUR),
        ("validation_loss", "validation", P95_COLOUR),
    ):
        pts = [
            (float(entry["step"]), float(entry[key]))
            for entry in curve
            if entry.get(key) is not None and entry.get("step") is not None
        ]
        if pts:
            lines.append((name, pts, colour))
    steps = [float(e["step"]) for e in curve if e.get("step") is not None]
    ends = (f"step {min(steps):g}", f"step {max(steps):g}") if steps else ("", "")
    return line_chart("loss", lines, unit="loss", x_labels=ends)
