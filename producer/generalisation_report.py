"""The leave-domains-out evaluation printed for people: one table with in-domain and
out-of-domain rows, random and the oracle beside every feature set, intervals in brackets."""

from typing import Any

from rich.console import Console
from rich.table import Table

from producer.costs import percent

TITLES = {
    "in_domain": "in-domain (folds over rows)",
    "out_of_domain": "out-of-domain (folds over domains)",
}


def print_generalisation(console: Console, data: dict[str, Any], *, source: str) -> None:
    console.print(
        f"{source}: {data['rows']:,} prompts in {data['domains']} domains; {data['folds']} "
        f"folds, {data['bootstrap']:,} bootstrap resamples (95 % intervals)"
    )
    console.print(
        "in-domain: folds over rows; out-of-domain: folds over domains (test domains unseen)"
    )
    table = Table(
        "protocol", "router", "p50 ms", "p95 ms", "frontier share at 95 %",
        f"quality at {_pct(data['quality_share'])}", "saves vs random",
        title="generalisation (quality as a share of all-frontier quality)",
    )  # fmt: skip
    for protocol, title in TITLES.items():
        if protocol not in data:
            continue
        section = data[protocol]
        for row in section["rows"]:
            table.add_row(title, *_cells(row, section["latency_ms"].get(row["router"])))
        table.add_section()
    console.print(table)
    for protocol in TITLES:
        for row in data.get(protocol, {}).get("rows", []):
            _verdict(console, protocol, row)
    for protocol, title in TITLES.items():
        deferral = data.get(protocol, {}).get("deferral")
        if deferral:
            console.print(
                f"{title}: out-of-distribution prompts deferred to the cascade: "
                f"{_pct(deferral['share'])} (needing the last tier: "
                f"{_maybe(deferral['hard_share_deferred'])} of them, "
                f"{_maybe(deferral['hard_share_kept'])} of the rest)"
            )


def _cells(row: dict[str, Any], latency: dict[str, Any] | None) -> list[str]:
    saving = row.get("saves_vs_random")
    return [
        row["router"],
        _ms(latency["p50"]) if latency else "-",
        _ms(latency["p95"]) if latency else "-",
        _with_interval(row["frontier_share_at_95"], row["frontier_share_at_95_ci"]),
        _with_interval(row["quality_at_share"], row["quality_at_share_ci"]),
        _with_interval(saving["share"], saving["ci"]) if saving else "",
    ]


def _verdict(console: Console, protocol: str, row: dict[str, Any]) -> None:
    saving = row.get("saves_vs_random")
    if not saving:
        return
    where = TITLES[protocol]
    clear = "clear of random" if saving["clear"] else "[yellow]not clear of random[/]"
    if saving["clear"] is None:
        clear = "no interval without --bootstrap"
    console.print(
        f"{where} {row['router']}: {_pct(saving['share'])} less frontier share than random, "
        f"interval {_pct(saving['ci'][0])} to {_pct(saving['ci'][1])}: {clear}"
    )


def _maybe(value: float | None) -> str:
    return "-" if value is None else _pct(value)


def _with_interval(value: float, interval: list[float]) -> str:
    return f"{_pct(value)} [{_pct(interval[0])}, {_pct(interval[1])}]"


def _pct(value: float) -> str:
    return percent(value * 100, 1)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"
