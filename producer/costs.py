"""Is routing worth it? What traffic costs on the configured tiers, routed or not.

`estimate` is the seed's back-of-the-envelope: a request count, a share per tier and an
average size. `simulate` routes a real traffic log (or a finished job's prompts) with each
strategy and projects its monthly cost. Both return plain, JSON-serialisable data; the
CLI prints it as tables or as JSON.

Prices are the tiers' config, tiers in config order (cheapest first); the last tier is the
frontier every strategy is compared against. A request's cost is its prompt tokens at the
tier's input_per_1k plus its completion tokens at output_per_1k.
"""

import csv
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from models.reports import fallback_tally, final_answers
from producer.batch_status import answer_paths_line
from producer.report import TIMES
from producer.status import get_job
from workers.errors import BadInput
from workers.settings import Settings, TierConfig
from workers.tokens import chars_tokens

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from workers.routers import Decision

DEFAULT_OUTPUT_SHARE = 0.5  # with equal input and output prices the split does not matter
DEFAULT_FALLBACK_RATE = 0.15  # the seed's fallback target
MIX_TOLERANCE = 1e-6  # 0.7 + 0.2 + 0.1 is 0.9999999999999999 in floating point
ALL_FRONTIER, CASCADE = "all-frontier", "cascade"
MAX_REPORTED_PROBLEMS = 20
CSV_FIELD_LIMIT = 16 * 1024 * 1024  # csv's default of 128K characters is below a long prompt
BAR_COLOURS = {"baseline": "#C44E52", "strategy": "#4C72B0"}


class CostInputError(BadInput, ValueError):
    """Bad numbers or a bad traffic log; the message says which and where."""


# --- formatting, shared with the evaluation report ---------------------------------------


def usd(value: float) -> str:
    if abs(value) >= 1000:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:,.4f}"


def percent(value: float | None, decimals: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f} %"


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}{TIMES}"


def _round_usd(value: float) -> float:
    return round(value, 6)


def _comparison(baseline: float, cost: float) -> dict[str, Any]:
    return {
        "savings_usd": _round_usd(baseline - cost),
        "savings_pct": round((1 - cost / baseline) * 100, 4) if baseline else None,
        "times_cheaper": round(baseline / cost, 4) if cost else None,
    }


# --- estimate ----------------------------------------------------------------------------


def parse_mix(text: str, tiers: Sequence[str]) -> list[float]:
    """'0.7,0.2,0.1' → one share per tier (config order), each in [0, 1], summing to 1."""
    try:
        shares = [float(part) for part in text.split(",")]
    except ValueError:
        raise CostInputError(f"--mix {text!r}: expected numbers separated by commas") from None
    if len(shares) != len(tiers):
        raise CostInputError(
            f"--mix has {len(shares)} share(s) but {len(tiers)} tiers are configured "
            f"({', '.join(tiers)}); give one share per tier, in that order"
        )
    if any(not 0.0 <= share <= 1.0 for share in shares):
        raise CostInputError(f"--mix shares must each be between 0 and 1, got {text}")
    if abs(sum(shares) - 1.0) > MIX_TOLERANCE:
        raise CostInputError(f"--mix shares must sum to 1, got {text} (sum {sum(shares):g})")
    return shares


def request_cost(tier: TierConfig, tokens: float, output_share: float) -> float:
    """USD for one request of `tokens` tokens, `output_share` of them completion."""
    prompt, completion = tokens * (1 - output_share), tokens * output_share
    return (prompt * tier.input_per_1k + completion * tier.output_per_1k) / 1000.0


def estimate(
    tiers: Mapping[str, TierConfig],
    *,
    requests: int,
    mix: Sequence[float],
    avg_tokens: float,
    output_share: float = DEFAULT_OUTPUT_SHARE,
) -> dict[str, Any]:
    """The seed's savings calculation: every request on the last tier, against the sum
    over tiers of share * requests * the cost of one request on that tier."""
    names = list(tiers)
    frontier = names[-1]
    per_tier = [
        _tier_line(name, tiers[name], share, requests, avg_tokens, output_share)
        for name, share in zip(names, mix, strict=True)
    ]
    routed = sum(line["cost_usd"] for line in per_tier)
    all_frontier = requests * request_cost(tiers[frontier], avg_tokens, output_share)
    return {
        "requests": requests,
        "avg_tokens": avg_tokens,
        "output_share": output_share,
        "frontier_tier": frontier,
        "tiers": per_tier,
        "all_frontier_usd": _round_usd(all_frontier),
        "routed_usd": _round_usd(routed),
        **_comparison(all_frontier, routed),
    }


def _tier_line(
    name: str, tier: TierConfig, share: float, requests: int, avg_tokens: float, output: float
) -> dict[str, Any]:
    one = request_cost(tier, avg_tokens, output)
    return {
        "tier": name,
        "share": share,
        "requests": round(share * requests, 6),
        "usd_per_request": one,
        "cost_usd": _round_usd(share * requests * one),
    }


def print_estimate(console: Console, data: dict[str, Any]) -> None:
    console.print(
        f"{data['requests']:,} requests of {data['avg_tokens']:,g} tokens "
        f"({data['output_share'] * 100:g} % completion)"
    )
    table = Table("tier", "share", "requests", "$ per request", "cost", title="routed")
    for line in data["tiers"]:
        table.add_row(
            line["tier"],
            percent(line["share"] * 100, 1),
            f"{line['requests']:,.0f}",
            usd(line["usd_per_request"]),
            usd(line["cost_usd"]),
        )
    console.print(table)
    console.print(
        f"all on {data['frontier_tier']} {usd(data['all_frontier_usd'])} vs routed "
        f"{usd(data['routed_usd'])}: saves {usd(data['savings_usd'])} "
        f"({percent(data['savings_pct'])}), {times(data['times_cheaper'])} cheaper"
    )


# --- traffic ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One logged request: its text (None when the log has only its length) and size."""

    text: str | None
    prompt_tokens: int
    completion_tokens: int
    category: str | None = None


Record = tuple[int, dict[str, Any]]  # (first line of the record, its columns)


def read_records(path: Path) -> list[Record]:
    """The rows of a CSV (header row) or JSON Lines file, with their line numbers."""
    suffix = path.suffix.lower()
    readers: dict[str, Callable[[Any], Iterator[Record]]] = {
        ".csv": _csv_records, ".jsonl": _json_records, ".ndjson": _json_records,
        ".json": _json_records,
    }  # fmt: skip
    if suffix not in readers:
        raise CostInputError(
            f"{path}: unsupported file type {suffix or '(none)'}; use .csv or .jsonl"
        )
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            records = list(readers[suffix](stream))
    except FileNotFoundError:
        raise CostInputError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise CostInputError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except CostInputError as exc:
        raise CostInputError(f"{path}: {exc}") from None
    if not records:
        raise CostInputError(f"{path}: no rows")
    return records


def _csv_records(stream: Any) -> Iterator[Record]:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.DictReader(stream, strict=True)
    start = 2
    try:
        for row in reader:
            if None in row or None in row.values():
                raise CostInputError(f"line {start}: the number of values differs from the header")
            yield start, dict(row)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise CostInputError(f"line {start}: not valid CSV ({exc})") from None


def _json_records(stream: Any) -> Iterator[Record]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CostInputError(f"line {number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise CostInputError(f"line {number}: expected a JSON object")
        yield number, record


def read_traffic(path: Path, *, completion_tokens: int | None = None) -> list[Request]:
    """A traffic log: per row a `prompt` (or chat `messages`) or a `prompt_length` /
    `length` in characters; optional `prompt_tokens`, `completion_tokens` and `category`.
    A row without `prompt_tokens` has ceil(characters / 4) (`chars_tokens`); one without a
    `completion_tokens` column has the `completion_tokens` argument, or when that is None
    as many as its prompt (half the request, as `cost estimate` assumes by default)."""
    requests, problems = [], []
    for line, record in read_records(path):
        try:
            requests.append(_request(record, completion_tokens))
        except ValueError as exc:
            problems.append(f"line {line}: {exc}")
    if problems:
        shown = [f"  {p}" for p in problems[:MAX_REPORTED_PROBLEMS]]
        more = len(problems) - len(shown)
        tail = [f"  ... and {more} more"] if more else []
        raise CostInputError("\n".join([f"{path}: {len(problems)} bad row(s)", *shown, *tail]))
    return requests


def _request(record: dict[str, Any], default_completion: int | None) -> Request:
    text = _text(record)
    characters = len(text) if text is not None else _count(record, ("prompt_length", "length"))
    if characters is None:
        raise ValueError("needs a 'prompt' (or 'messages') or a 'prompt_length'/'length' column")
    prompt_tokens = _count(record, ("prompt_tokens",))
    prompt_tokens = chars_tokens(characters) if prompt_tokens is None else prompt_tokens
    completion = _count(record, ("completion_tokens",))
    if completion is None:
        completion = prompt_tokens if default_completion is None else default_completion
    category = record.get("category")
    return Request(text, prompt_tokens, completion, str(category) if category else None)


def _text(record: dict[str, Any]) -> str | None:
    from workers.routing import last_user_text  # here, not on top: see strategy_names

    prompt, messages = record.get("prompt"), record.get("messages")
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        return last_user_text(messages) or None
    return None


def _count(record: dict[str, Any], columns: Sequence[str]) -> int | None:
    """The first of `columns` present and non-empty, as a non-negative integer."""
    for column in columns:
        value = record.get(column)
        if value is None or value == "":
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"'{column}' is {value!r}; expected a whole number") from None
        if number < 0 or not number.is_integer():
            raise ValueError(f"'{column}' is {value!r}; expected a whole number >= 0")
        return int(number)
    return None


def job_traffic(session: Session, job_id: int) -> tuple[list[Request], float | None]:
    """A finished job's answered prompts, sized by each one's final answer call (the call an
    unrouted request would have made), and the job's fallback rate (None when nothing of it
    was routed)."""
    from workers.routing import last_user_text

    job = get_job(session, job_id)
    requests = [
        Request(
            last_user_text(answer.messages),
            answer.prompt_tokens,
            answer.completion_tokens,
            _category(answer.meta),
        )
        for answer in final_answers(session=session, job_id=job_id)
    ]
    rate = fallback_tally(session=session, job_id=job_id).rate if job.router else None
    return requests, rate


def _category(meta: dict[str, Any] | None) -> str | None:
    value = (meta or {}).get("category")
    return str(value) if value else None


def sample(requests: list[Request], size: int | None, seed: int = 0) -> list[Request]:
    """A seeded sample in log order; all of them when `size` is None or not smaller."""
    if size is None or size >= len(requests):
        return requests
    chosen = sorted(random.Random(seed).sample(range(len(requests)), size))
    return [requests[i] for i in chosen]


# --- simulate ---------------------------------------------------------------------------


def strategy_names() -> tuple[str, ...]:
    # imported here: the routers pull in the openai client, which `cost estimate` never needs
    from workers.routers import ROUTER_NAMES

    return (ALL_FRONTIER, *ROUTER_NAMES, CASCADE)


def parse_strategies(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in strategy_names()]
    if unknown or not names:
        choices = ", ".join(strategy_names())
        raise CostInputError(f"unknown strategy {', '.join(unknown) or '(none)'}; use {choices}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class StrategyRun:
    """What a strategy does to each request: its cost, and the calls it makes per tier."""

    name: str
    row_costs: list[float]
    calls: dict[str, float]  # calls per request, by tier
    router_usd: float = 0.0  # the router's own model calls (llm router), in row_costs too
    notes: tuple[str, ...] = ()


def simulate(
    requests: Sequence[Request],
    *,
    settings: Settings,
    strategies: Sequence[str],
    monthly_requests: int,
    fallback_rate: float,
    classifier_path: Path | None = None,
) -> dict[str, Any]:
    """Each strategy's projected monthly cost: the sample's cost scaled to
    `monthly_requests`. all-frontier, the baseline, is always computed."""
    if not requests:
        raise CostInputError("the traffic has no requests to simulate")
    runs: list[StrategyRun] = []
    skipped: list[dict[str, str]] = []
    for name in dict.fromkeys([ALL_FRONTIER, *strategies]):
        outcome = _run_strategy(name, requests, settings, fallback_rate, classifier_path)
        if isinstance(outcome, StrategyRun):
            runs.append(outcome)
        else:
            skipped.append(outcome)
    scale = monthly_requests / len(requests)
    baseline = sum(runs[0].row_costs) * scale
    return {
        "requests": len(requests),
        "monthly_requests": monthly_requests,
        "frontier_tier": list(settings.tiers)[-1],
        "fallback_rate": fallback_rate,
        "tokens": _token_summary(requests),
        "strategies": [_summary(run, scale, baseline) for run in runs],
        "skipped": skipped,
        "by_category": _by_category(requests, runs, scale),
    }


def _run_strategy(
    name: str,
    requests: Sequence[Request],
    settings: Settings,
    fallback_rate: float,
    classifier_path: Path | None,
) -> StrategyRun | dict[str, str]:
    tiers = settings.tiers
    names = list(tiers)
    first, last = names[0], names[-1]
    if name == ALL_FRONTIER:
        return StrategyRun(name, [_cost(tiers[last], r) for r in requests], {last: 1.0})
    if name == CASCADE:
        costs = [_cost(tiers[first], r) + fallback_rate * _cost(tiers[last], r) for r in requests]
        return StrategyRun(name, costs, _cascade_calls(first, last, fallback_rate))
    return _routed(name, requests, settings, classifier_path)


def _cascade_calls(first: str, last: str, fallback_rate: float) -> dict[str, float]:
    if first == last:
        return {first: 1.0 + fallback_rate}
    return {first: 1.0, last: fallback_rate}


def _cost(tier: TierConfig, request: Request) -> float:
    return tier.cost_usd(request.prompt_tokens, request.completion_tokens)


def _routed(
    name: str, requests: Sequence[Request], settings: Settings, classifier_path: Path | None
) -> StrategyRun | dict[str, str]:
    from workers.routers.calibration import decision_workers, route_sample, usable_router

    texts = [r.text for r in requests if r.text is not None]
    if len(texts) < len(requests):
        return _skip(name, "the log has no prompt text for some rows (only lengths) to route")
    router = usable_router(name, settings=settings, classifier_path=classifier_path, probe=texts[0])
    if isinstance(router, str):
        return _skip(name, router)
    decisions = route_sample(router, texts, workers=decision_workers(router, settings))
    return _routed_run(name, requests, decisions, settings)


def _skip(name: str, reason: str) -> dict[str, str]:
    return {"strategy": name, "reason": reason}


def _routed_run(
    name: str, requests: Sequence[Request], decisions: list["Decision"], settings: Settings
) -> StrategyRun:
    answers = [_cost(settings.tiers[d.tier], r) for d, r in zip(decisions, requests, strict=True)]
    routing = [_router_call_cost(d, settings) for d in decisions]
    counts = Counter(d.tier for d in decisions)
    failed = sum(1 for d in decisions if d.error is not None)
    notes = (f"{failed} router call(s) failed and went to the fallback tier",) if failed else ()
    return StrategyRun(
        name,
        [a + b for a, b in zip(answers, routing, strict=True)],
        {tier: counts[tier] / len(decisions) for tier in settings.tiers if counts[tier]},
        router_usd=sum(routing),
        notes=notes,
    )


def _router_call_cost(decision: "Decision", settings: Settings) -> float:
    if decision.call is None or decision.asked_tier is None:
        return 0.0
    tier = settings.tiers[decision.asked_tier]
    return tier.cost_usd(decision.call.prompt_tokens, decision.call.completion_tokens)


def _summary(run: StrategyRun, scale: float, baseline: float) -> dict[str, Any]:
    monthly = sum(run.row_costs) * scale
    return {
        "strategy": run.name,
        "sample_usd": _round_usd(sum(run.row_costs)),
        "monthly_usd": _round_usd(monthly),
        **_comparison(baseline, monthly),
        "calls_per_request": {tier: round(n, 6) for tier, n in run.calls.items()},
        "router_monthly_usd": _round_usd(run.router_usd * scale),
        "notes": list(run.notes),
    }


def _token_summary(requests: Sequence[Request]) -> dict[str, float]:
    return {
        "prompt_mean": sum(r.prompt_tokens for r in requests) / len(requests),
        "completion_mean": sum(r.completion_tokens for r in requests) / len(requests),
    }


def _by_category(
    requests: Sequence[Request], runs: list[StrategyRun], scale: float
) -> dict[str, dict[str, Any]]:
    """Monthly cost per category and strategy (the category's part of the projection);
    empty when the log has no categories."""
    if all(r.category is None for r in requests):
        return {}
    groups: dict[str, list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        groups[request.category or "(none)"].append(index)
    return {
        category: {
            "requests_share": len(rows) / len(requests),
            "monthly_usd": {
                run.name: _round_usd(sum(run.row_costs[i] for i in rows) * scale) for run in runs
            },
        }
        for category, rows in sorted(groups.items())
    }


def print_simulation(console: Console, data: dict[str, Any], *, source: str) -> None:
    tokens = data["tokens"]
    console.print(
        f"{source}: {data['requests']:,} requests, on average {tokens['prompt_mean']:,.0f} "
        f"prompt + {tokens['completion_mean']:,.0f} completion tokens; projected to "
        f"{data['monthly_requests']:,} requests a month"
    )
    console.print(_strategy_table(data))
    if any(s["strategy"] == CASCADE for s in data["strategies"]):
        console.print(f"cascade escalates {percent(data['fallback_rate'] * 100, 1)} of requests")
    for entry in data["strategies"]:
        for note in entry["notes"]:
            console.print(f"note: {entry['strategy']}: {note}")
    for entry in data["skipped"]:
        console.print(f"[yellow]skipped {entry['strategy']}:[/] {entry['reason']}")
    if data["by_category"]:
        console.print(_category_table(data))
    recorded = data.get("recorded")
    if recorded:
        _print_recorded(console, recorded, data["monthly_requests"])


def _print_recorded(console: Console, recorded: dict[str, Any], monthly: int) -> None:
    """The job's own cache hits, budget and batch vs online share, beside the strategies'
    projections."""
    cache, budget = recorded["cache"], recorded["budget"]
    if recorded.get("answers"):
        console.print(answer_paths_line(recorded["answers"]))
    console.print(
        f"response cache: {cache['hits']:,} hits ({percent(cache['hit_rate'] * 100, 1)} of the "
        f"job), saved {usd(cache['saved_usd'])}; at that rate {usd(cache['monthly_saved_usd'])} "
        f"a month over {monthly:,} requests"
    )
    if budget["max_cost_usd"] is not None:
        console.print(
            f"budget: {usd(budget['spent_usd'])} of {usd(budget['max_cost_usd'])} spent, "
            f"{budget['cancelled']:,} prompts cancelled for budget"
        )


def _strategy_table(data: dict[str, Any]) -> Table:
    table = Table(
        "strategy", "monthly cost", "savings", "cheaper by", "calls per request",
        title=f"monthly cost (frontier tier: {data['frontier_tier']})",
    )  # fmt: skip
    for entry in data["strategies"]:
        calls = ", ".join(f"{t} {n:.2f}" for t, n in entry["calls_per_request"].items())
        baseline = entry["strategy"] == ALL_FRONTIER
        table.add_row(
            entry["strategy"],
            usd(entry["monthly_usd"]),
            "(baseline)" if baseline else _savings(entry),
            "" if baseline else times(entry["times_cheaper"]),
            calls,
        )
    return table


def _savings(entry: dict[str, Any]) -> str:
    return f"{usd(entry['savings_usd'])} ({percent(entry['savings_pct'], 1)})"


def _category_table(data: dict[str, Any]) -> Table:
    names = [entry["strategy"] for entry in data["strategies"]]
    table = Table("category", "share", *names, title="monthly cost by category")
    for category, entry in data["by_category"].items():
        costs = [usd(entry["monthly_usd"][name]) for name in names]
        table.add_row(category, percent(entry["requests_share"] * 100, 1), *costs)
    return table


def plot_simulation(data: dict[str, Any], path: Path) -> Path:
    """One bar per strategy: its projected monthly cost, labelled with its savings."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 1.6 * len(data["strategies"])), 4.8), layout="constrained")
    _cost_bars(figure.subplots(), data)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


def _cost_bars(axes: "Axes", data: dict[str, Any]) -> None:
    from matplotlib.ticker import FuncFormatter

    entries = data["strategies"]
    baseline = [e["strategy"] == ALL_FRONTIER for e in entries]
    colours = [BAR_COLOURS["baseline" if b else "strategy"] for b in baseline]
    names, costs = [e["strategy"] for e in entries], [e["monthly_usd"] for e in entries]
    bars = axes.bar(names, costs, color=colours)
    labels = [
        f"{usd(e['monthly_usd'])}\n" + ("baseline" if b else f"{percent(e['savings_pct'])} saved")
        for e, b in zip(entries, baseline, strict=True)
    ]
    axes.bar_label(bars, labels=labels)
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"${value:,.0f}"))
    axes.set_ylabel("USD per month")
    axes.set_title(f"projected cost of {data['monthly_requests']:,} requests a month")
    axes.margins(y=0.2)  # room for the labels above the tallest bar
