"""Router evaluation on labelled prompts: how fast each router decides, how much traffic it
sends to the last tier, how often it agrees with the labels, and, where the file records
whether a weak and a strong model answered correctly, the quality it buys per last-tier
call: RouteLLM's cost-quality curve and its "calls to the strong model needed" measure.

Every tier below the last counts as the weak model and the last tier as the strong one, so
a prompt's routed answer is correct when `strong_correct` (routed to the last tier) or
`weak_correct` (anywhere else) says so.

The curve sweeps a router's threshold: sort the prompts by score, send the top k to the
last tier, for every k at which the score changes (prompts with equal scores cannot be
separated by a threshold, so they move together). Routers without a continuous score
(rules, llm) have one operating point, drawn between the two ends: nothing and everything
on the last tier. `frontier_share_at_95` is the smallest share of last-tier calls on that
curve whose quality reaches 95 % of all-last-tier quality; points on the curve are what a
threshold can achieve, so there is no interpolation between them.
"""

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from producer.costs import Record, percent, read_records
from workers.routers import Decision, Router, RouterError, tier_for_level
from workers.routers.base import Level
from workers.routers.calibration import decision_workers, has_scores, route_sample
from workers.routers.labeled import LABEL, STRONG, WEAK, load_labeled
from workers.settings import Settings

if TYPE_CHECKING:
    from matplotlib.axes import Axes

QUALITY_TARGET = 0.95  # of all-last-tier quality, as RouteLLM's APGR/CPT(95 %) tables
LATENCY_ROWS = 200  # single decisions timed for batch-scoring routers: enough for a p95
CURVE_STEP = 0.01  # the curve is reported with a point at least every 1 % of share
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes"}, {"0", "false", "no"}
LEVEL_OF: dict[float, Level] = {0.0: "easy", 0.5: "medium", 1.0: "hard"}

Point = tuple[float, float]  # (share of prompts on the last tier, quality)


@dataclass(frozen=True)
class Labelled:
    texts: list[str]
    label_tiers: list[str] | None  # the tier each `label` names, when the file has labels
    weak: list[bool] | None  # weak_correct / strong_correct, when the file has them
    strong: list[bool] | None


# --- reading -----------------------------------------------------------------------------


def read_labelled(path: Path, tiers: Sequence[str]) -> Labelled:
    """Prompts with their label tiers and/or weak/strong correctness. Labels follow
    `load_labeled` (a level word or a tier name), mapped to tiers as the routers map levels."""
    records = read_records(path)
    texts, difficulties = load_labeled(path, tiers=tiers)  # validates every row, with lines
    if len(texts) != len(records):
        raise RouterError(
            f"{path}: {len(records)} rows but {len(texts)} prompts; remove blank rows"
        )
    columns = set(records[0][1])
    labels = [tier_for_level(tiers, LEVEL_OF[d]) for d in difficulties]
    weak, strong = _correctness(path, records) if {WEAK, STRONG} <= columns else (None, None)
    return Labelled(texts, labels if LABEL in columns else None, weak, strong)


def _correctness(path: Path, records: list[Record]) -> tuple[list[bool], list[bool]]:
    weak, strong, problems = [], [], []
    for line, record in records:
        try:
            weak.append(_flag(record, WEAK))
            strong.append(_flag(record, STRONG))
        except ValueError as exc:
            problems.append(f"  line {line}: {exc}")
    if problems:
        raise RouterError("\n".join([f"{path}: {len(problems)} bad row(s)", *problems[:20]]))
    return weak, strong


def _flag(record: dict[str, Any], column: str) -> bool:
    value = record.get(column)
    word = str(value).strip().lower()
    if isinstance(value, bool | int | str) and word in TRUE_WORDS | FALSE_WORDS:
        return word in TRUE_WORDS
    raise ValueError(f"'{column}' is {value!r}; expected 0/1 or true/false")


def sample_rows(data: Labelled, size: int | None, seed: int = 0) -> Labelled:
    """A seeded sample of the rows, in file order; all of them when `size` is None."""
    if size is None or size >= len(data.texts):
        return data
    chosen = sorted(random.Random(seed).sample(range(len(data.texts)), size))

    def pick(values: list[Any] | None) -> list[Any] | None:
        return None if values is None else [values[i] for i in chosen]

    texts = [data.texts[i] for i in chosen]
    return replace(
        data,
        texts=texts,
        label_tiers=pick(data.label_tiers),
        weak=pick(data.weak),
        strong=pick(data.strong),
    )


# --- evaluating --------------------------------------------------------------------------


def evaluate(
    data: Labelled,
    routers: Sequence[Router],
    *,
    settings: Settings,
    skipped: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    tiers = list(settings.tiers)
    reference = _reference(data)
    return {
        "rows": len(data.texts),
        "tiers": tiers,
        "last_tier": tiers[-1],
        "reference": {k: round(v, 6) for k, v in reference.items()} if reference else None,
        "routers": [_evaluate_one(r, data, tiers, settings, reference) for r in routers],
        "skipped": list(skipped),
    }


def _reference(data: Labelled) -> dict[str, float] | None:
    """Quality with every prompt on the weak model, or on the strong one, and the target."""
    if data.weak is None or data.strong is None:
        return None
    all_strong = _mean(data.strong)
    return {
        "all_weak_quality": _mean(data.weak),
        "all_strong_quality": all_strong,
        "target_quality": QUALITY_TARGET * all_strong,
    }


def _evaluate_one(
    router: Router,
    data: Labelled,
    tiers: list[str],
    settings: Settings,
    reference: dict[str, float] | None,
) -> dict[str, Any]:
    decisions = route_sample(router, data.texts, workers=decision_workers(router, settings))
    routed = [d.tier for d in decisions]
    result: dict[str, Any] = {
        "router": router.name,
        "latency_ms": latency_summary(_latencies(router, data.texts, decisions)),
        "frontier_share": _share(routed, tiers[-1]),
        "tier_shares": {tier: _share(routed, tier) for tier in tiers},
        "router_errors": sum(1 for d in decisions if d.error is not None),
        "deferred_share": _mean([d.deferred for d in decisions]),
    }
    if data.label_tiers is not None:
        result["accuracy"] = _mean([a == b for a, b in zip(routed, data.label_tiers, strict=True)])
        result["confusion"] = confusion(data.label_tiers, routed, tiers)
    if reference is not None:
        result.update(_quality(router, decisions, data, tiers[-1], reference))
    return result


def _latencies(router: Router, texts: list[str], decisions: list[Decision]) -> list[float]:
    """Per-decision latency. A batch-scored decision's latency is the batch's amortised
    time, not what one request waits for, so those routers are timed deciding one prompt
    at a time on an evenly spread subset."""
    if not has_scores(router):
        return [d.latency_ms for d in decisions]
    step = max(1, len(texts) // LATENCY_ROWS)
    return [router.decide_now(text).latency_ms for text in texts[::step][:LATENCY_ROWS]]


def latency_summary(values: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "rows": len(ordered),
        "p50": _round(nearest_rank(ordered, 50)),
        "p95": _round(nearest_rank(ordered, 95)),
    }


def nearest_rank(ordered: Sequence[float], pct: int) -> float | None:
    """The smallest value with at least pct % of the values at or below it (as the job
    report computes its percentiles)."""
    if not ordered:
        return None
    rank = max(1, -(-pct * len(ordered) // 100))
    return ordered[rank - 1]


def confusion(labels: Sequence[str], routed: Sequence[str], tiers: Sequence[str]) -> dict:
    """{label tier: {routed tier: count}}, every tier in config order on both axes."""
    counts = Counter(zip(labels, routed, strict=True))
    return {label: {tier: counts[(label, tier)] for tier in tiers} for label in tiers}


def _quality(
    router: Router,
    decisions: list[Decision],
    data: Labelled,
    last: str,
    reference: dict[str, float],
) -> dict[str, Any]:
    assert data.weak is not None and data.strong is not None
    on_last = [d.tier == last for d in decisions]
    quality = _mean(
        [s if top else w for top, w, s in zip(on_last, data.weak, data.strong, strict=True)]
    )
    if has_scores(router):
        scores = [d.score if d.score is not None else 0.0 for d in decisions]
        points = score_curve(scores, data.weak, data.strong)
    else:
        points = operating_curve(_mean(on_last), quality, reference)
    strong = reference["all_strong_quality"]
    return {
        "quality": quality,
        "quality_vs_all_strong": _round(quality / strong) if strong else None,
        "frontier_share_at_95": share_reaching(points, reference["target_quality"]),
        "curve": [{"frontier_share": s, "quality": q} for s, q in thin(points)],
    }


def score_curve(scores: Sequence[float], weak: Sequence[bool], strong: Sequence[bool]) -> list:
    """(share on the last tier, quality) for every threshold: highest scores first, one
    point per tie group."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: -scores[i])
    correct = sum(weak)
    points: list[Point] = [(0.0, correct / n)]
    for position, index in enumerate(order, start=1):
        correct += int(strong[index]) - int(weak[index])
        if position == n or scores[order[position]] < scores[index]:
            points.append((position / n, correct / n))
    return points


def operating_curve(share: float, quality: float, reference: dict[str, float]) -> list[Point]:
    ends = [(0.0, reference["all_weak_quality"]), (1.0, reference["all_strong_quality"])]
    return sorted({*ends, (share, quality)})


def share_reaching(points: Sequence[Point], target: float) -> float | None:
    """The smallest last-tier share whose quality reaches `target` (a hair of float
    tolerance: a sum of 0/1 over n need not equal 0.95 * the same sum exactly)."""
    reached = [share for share, quality in points if quality >= target - 1e-12]
    return min(reached) if reached else None


def thin(points: Sequence[Point], step: float = CURVE_STEP) -> list[Point]:
    """The curve with points at least `step` of share apart (ends kept), rounded for JSON."""
    kept = [points[0]]
    for point in points[1:-1]:
        if point[0] - kept[-1][0] >= step:
            kept.append(point)
    if len(points) > 1:
        kept.append(points[-1])
    return [(round(s, 6), round(q, 6)) for s, q in kept]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _share(routed: Sequence[str], tier: str) -> float:
    return sum(1 for t in routed if t == tier) / len(routed) if routed else 0.0


def _mean(values: Sequence[bool | float]) -> float:
    return sum(values) / len(values) if values else 0.0


# --- printing and plotting ---------------------------------------------------------------


def print_evaluation(console: Console, data: dict[str, Any], *, source: str) -> None:
    console.print(f"{source}: {data['rows']:,} prompts; tiers {', '.join(data['tiers'])}")
    reference = data["reference"]
    if reference:
        console.print(
            f"quality with every prompt below {data['last_tier']}: "
            f"{percent(reference['all_weak_quality'] * 100, 1)}, all on {data['last_tier']}: "
            f"{percent(reference['all_strong_quality'] * 100, 1)} "
            f"(95 % of it: {percent(reference['target_quality'] * 100, 1)})"
        )
    console.print(_router_table(data))
    for entry in data["routers"]:
        if "confusion" in entry:
            console.print(_confusion_table(entry, data["tiers"]))
    for entry in data["routers"]:
        if entry["router_errors"]:
            console.print(
                f"note: {entry['router']}: {entry['router_errors']:,} router call(s) failed "
                "and went to the fallback tier"
            )
    for entry in data["routers"]:
        if entry.get("deferred_share"):
            console.print(
                f"{entry['router']}: {_pct(entry['deferred_share'])} of prompts were out of "
                f"distribution and deferred to the cascade (sent to {data['tiers'][0]})"
            )
    for entry in data["skipped"]:
        console.print(f"[yellow]skipped {entry['router']}:[/] {entry['reason']}")


def _router_table(data: dict[str, Any]) -> Table:
    columns = ["router", "p50 ms", "p95 ms", f"to {data['last_tier']}"]
    labelled = any("accuracy" in entry for entry in data["routers"])
    columns += ["accuracy"] if labelled else []
    if data["reference"]:
        columns += ["quality", f"vs all {data['last_tier']}", f"{data['last_tier']} share at 95 %"]
    table = Table(*columns, title="routers")
    for entry in data["routers"]:
        table.add_row(*_router_cells(entry, labelled, bool(data["reference"])))
    return table


def _router_cells(entry: dict[str, Any], labelled: bool, quality: bool) -> list[str]:
    latency = entry["latency_ms"]
    cells = [
        entry["router"],
        _ms(latency["p50"]),
        _ms(latency["p95"]),
        _pct(entry["frontier_share"]),
    ]
    cells += [_pct(entry.get("accuracy"))] if labelled else []
    if quality:
        cells += [
            _pct(entry["quality"]),
            _pct(entry["quality_vs_all_strong"]),
            _pct(entry["frontier_share_at_95"]),
        ]
    return cells


def _confusion_table(entry: dict[str, Any], tiers: list[str]) -> Table:
    table = Table("label \\ routed", *tiers, title=f"{entry['router']}: confusion matrix")
    for label, row in entry["confusion"].items():
        table.add_row(label, *(f"{row[tier]:,}" for tier in tiers))
    return table


def _pct(value: float | None) -> str:
    return percent(None if value is None else value * 100, 1)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"  # rules decide in microseconds


def plot_evaluation(data: dict[str, Any], path: Path) -> Path:
    """Quality against last-tier share, one line per router, with the 95 % target."""
    if not data["reference"]:
        raise RouterError("--plot needs weak_correct and strong_correct columns to draw quality")
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 5.2), layout="constrained")
    _draw_curves(figure.subplots(), data)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


def _draw_curves(axes: "Axes", data: dict[str, Any]) -> None:
    for entry in data["routers"]:
        shares = [p["frontier_share"] * 100 for p in entry["curve"]]
        qualities = [p["quality"] * 100 for p in entry["curve"]]
        line = axes.plot(shares, qualities, label=entry["router"])[0]
        point = (entry["frontier_share"] * 100, entry["quality"] * 100)
        axes.plot(*point, marker="o", color=line.get_color())  # where its thresholds route
    target = data["reference"]["target_quality"] * 100
    axes.axhline(target, linestyle="--", color="grey", label="95 % of all-last-tier quality")
    axes.set_xlabel(f"prompts sent to {data['last_tier']} (%)")
    axes.set_ylabel("quality: routed answers correct (%)")
    axes.set_title("cost-quality curve (dots: the configured thresholds)")
    axes.legend()
