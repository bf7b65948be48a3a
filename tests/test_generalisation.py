"""Leave-domains-out evaluation (`router eval --leave-domains-out`): folds that keep domains
whole, a structural signal that carries to unseen domains beating random with an interval
clear of it, the oracle and random always beside, and each bad input explained."""

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from producer.generalisation import (
    domain_folds,
    evaluate_generalisation,
    read_domain_labelled,
    row_folds,
)
from tests.helpers.analysis import EXAMPLE_CONFIG, run, run_json
from tests.helpers.services import shared_data
from tests.test_evaluation import write_csv
from workers.errors import ExitCode
from workers.routers import RouterError

TIERS = ["small", "medium", "frontier"]
TOPICS = {
    "astronomy": ["planet", "orbit", "comet", "nebula"],
    "cooking": ["onion", "simmer", "pastry", "saffron"],
    "law": ["statute", "tort", "plaintiff", "appeal"],
    "music": ["chord", "tempo", "sonata", "octave"],
    "geology": ["basalt", "fault", "magma", "strata"],
    "finance": ["bond", "equity", "coupon", "ledger"],
}


def synthetic_rows(per_domain: int = 40, seed: int = 0) -> list[dict[str, Any]]:
    """Each domain has its own words; in every domain the hard prompts (weak wrong, strong
    right) are the ones with arithmetic in them. Words say the domain, structure says
    the difficulty: only structure carries to a domain not trained on."""
    rng = random.Random(seed)
    rows = []
    for domain, words in TOPICS.items():
        for index in range(per_domain):
            hard = index % 4 == 0
            topic = " ".join(rng.choice(words) for _ in range(6))
            if hard:
                a, b, c = (rng.randint(10, 999) for _ in range(3))
                prompt = f"About the {topic}: compute {a} * {b} + {c} = ? and {b} / {a} - {c}"
            else:
                prompt = f"Tell me about the {topic} in a sentence"
            weak, strong = (0, 1) if hard else (int(rng.random() < 0.97), 1)
            rows.append(
                {"domain": domain, "prompt": prompt, "weak_correct": weak, "strong_correct": strong}
            )
    return rows


def test_domain_folds_keep_each_domain_whole_and_balance_rows() -> None:
    domains = ["a"] * 10 + ["b"] * 6 + ["c"] * 5 + ["d"] * 4 + ["e"] * 1
    folds = domain_folds(domains, 2, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(domains)))
    seen = [{domains[i] for i in fold} for fold in folds]
    assert not seen[0] & seen[1]  # no domain in two folds
    # largest first, each to the lighter fold: a 10 | b 6, c 5 → 10 | 11, d → 14 | 11, e → 14 | 12
    assert sorted(fold.size for fold in folds) == [12, 14]
    with pytest.raises(RouterError, match="only 5 domains"):
        domain_folds(domains, 6, seed=0)


def test_row_folds_partition_the_rows() -> None:
    folds = row_folds(11, 3, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(11))
    assert sorted(fold.size for fold in folds) == [3, 4, 4]
    assert [f.tolist() for f in folds] == [f.tolist() for f in row_folds(11, 3, seed=1)]


def test_structure_carries_to_unseen_domains(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "synthetic.csv", synthetic_rows())
    data = read_domain_labelled(path, TIERS)
    result = evaluate_generalisation(
        data, feature_sets=["structural"], folds=3, bootstrap=200, share=0.25
    )
    outside = {row["router"]: row for row in result["out_of_domain"]["rows"]}
    assert list(outside) == ["random", "oracle", "structural"]
    # 60 of 240 prompts need the strong model; the weak model is right on ~97 % of the rest
    oracle, structural, baseline = outside["oracle"], outside["structural"], outside["random"]
    assert oracle["frontier_share_at_95"] <= structural["frontier_share_at_95"]
    assert structural["frontier_share_at_95"] <= 0.3 < baseline["frontier_share_at_95"]
    saving = structural["saves_vs_random"]
    assert saving["clear"] and saving["ci"][0] > 0.2
    low, high = structural["frontier_share_at_95_ci"]
    assert low <= structural["frontier_share_at_95"] <= high
    assert structural["quality_at_share"] > baseline["quality_at_share"]
    for fold in result["out_of_domain"]["folds"]:
        assert len(fold["domains"]) == 2 and fold["rows"] == 80
    # every domain has its own words: unseen ones are out of distribution, seen ones are not
    assert result["out_of_domain"]["deferral"]["share"] > 0.9
    assert result["in_domain"]["deferral"]["share"] < 0.2
    latency = result["out_of_domain"]["latency_ms"]["structural"]
    assert latency["rows"] == 80 and latency["p50"] <= latency["p95"]


def test_cli_prints_in_and_out_of_domain_rows(tmp_path: Path, use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    path = write_csv(tmp_path / "synthetic.csv", synthetic_rows(per_domain=24))
    args = ["router", "eval", str(path), "--leave-domains-out", "--folds", "3"]
    args += ["--features", "tfidf,structural", "--bootstrap", "50"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "in-domain" in result.output and "out-of-domain" in result.output
    assert "oracle" in result.output and "random" in result.output
    data = run_json(*args)
    assert data["feature_sets"] == ["tfidf", "structural"] and data["domains"] == 6
    assert [row["router"] for row in data["in_domain"]["rows"]] == [
        "random", "oracle", "tfidf", "structural",
    ]  # fmt: skip


def test_mmlu_subset_leave_domains_out(use_config: Any) -> None:
    """A small slice of the real labels runs end to end, every figure in its range."""
    use_config(EXAMPLE_CONFIG)
    data = run_json(
        "router", "eval", str(shared_data("mmlu_routing.csv")), "--leave-domains-out",
        "--sample", "1500", "--folds", "3", "--bootstrap", "50", "--features", "structural",
    )  # fmt: skip
    assert data["rows"] == 1500 and data["domains"] > 10
    for protocol in ("in_domain", "out_of_domain"):
        rows = {row["router"]: row for row in data[protocol]["rows"]}
        assert 0 < rows["oracle"]["frontier_share_at_95"] < rows["random"]["frontier_share_at_95"]
        assert 0 <= rows["structural"]["frontier_share_at_95"] <= 1


def test_bad_inputs_are_explained(tmp_path: Path, use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    rows = synthetic_rows(per_domain=8)
    no_domain = write_csv(
        tmp_path / "nodomain.csv", [{k: v for k, v in r.items() if k != "domain"} for r in rows]
    )
    result = run("router", "eval", str(no_domain), "--leave-domains-out")
    assert result.exit_code == ExitCode.BAD_INPUT and "no 'domain' column" in result.output
    blank = [dict(r) for r in rows]
    blank[3]["domain"] = " "
    result = run(
        "router", "eval", str(write_csv(tmp_path / "blank.csv", blank)), "--leave-domains-out"
    )
    assert result.exit_code == ExitCode.BAD_INPUT and "line(s) 5" in result.output
    one = [dict(r, domain="all") for r in rows]
    result = run("router", "eval", str(write_csv(tmp_path / "one.csv", one)), "--leave-domains-out")
    assert result.exit_code == ExitCode.BAD_INPUT and "only one domain" in result.output
    levels = write_csv(tmp_path / "levels.csv", [dict(domain="a", prompt="hi", label="easy")])
    result = run("router", "eval", str(levels), "--leave-domains-out")
    assert result.exit_code == ExitCode.BAD_INPUT and "weak_correct" in result.output
    good = write_csv(tmp_path / "good.csv", rows)
    result = run("router", "eval", str(good), "--leave-domains-out", "--folds", "9")
    assert result.exit_code == ExitCode.USAGE and "only 6 domains" in result.output
    result = run("router", "eval", str(good), "--leave-domains-out", "--features", "tfidf,words")
    assert result.exit_code == ExitCode.USAGE and "unknown feature set words" in result.output
    assert json.loads(run("router", "eval", str(good), "--json").output)["rows"] == len(rows)
