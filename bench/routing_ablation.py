"""The feature-set ablation table (docs/routing-worth-it.md, step 6) from the JSON of
`distillery router eval LABELED --leave-domains-out --json`: one markdown row per feature
set, in-domain and out-of-domain frontier share at 95 % with their intervals, the saving
against random, and single-decision latency p50/p95, with random and the oracle above.

    distillery router eval ../shared/data/mmlu_routing.csv --leave-domains-out \\
        --features tfidf,structural,tfidf+structural --bootstrap 200 --json > ldo.json
    python bench/routing_ablation.py ldo.json
"""

import json
import sys
from typing import Any


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def with_interval(row: dict[str, Any], key: str) -> str:
    low, high = row[f"{key}_ci"]
    return f"{pct(row[key])} [{pct(low)}, {pct(high)}]"


def saving(row: dict[str, Any]) -> str:
    found = row.get("saves_vs_random")
    if not found:
        return ""
    return f"{pct(found['share'])} [{pct(found['ci'][0])}, {pct(found['ci'][1])}]"


def latency(section: dict[str, Any], name: str) -> str:
    found = section["latency_ms"].get(name)
    return "-" if not found else f"{found['p50']:.3g} / {found['p95']:.3g}"


def table(data: dict[str, Any]) -> str:
    inside = {row["router"]: row for row in data["in_domain"]["rows"]}
    outside = {row["router"]: row for row in data["out_of_domain"]["rows"]}
    lines = [
        "| feature set | in-domain share at 95 % | saves vs random | out-of-domain share at "
        "95 % | saves vs random | out-of-domain quality at "
        f"{pct(data['quality_share'])} | decision ms p50 / p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in inside:
        lines.append(
            f"| {name} | {with_interval(inside[name], 'frontier_share_at_95')} | "
            f"{saving(inside[name])} | {with_interval(outside[name], 'frontier_share_at_95')} | "
            f"{saving(outside[name])} | {with_interval(outside[name], 'quality_at_share')} | "
            f"{latency(data['out_of_domain'], name)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as handle:
        print(table(json.load(handle)))
