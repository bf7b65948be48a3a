"""`router eval` and `router calibrate`: accuracy and confusion matrix of the rules router on
prompts whose routing is known, the random baseline's straight cost-quality line, a
classifier trained on MMLU beating it on held-out rows, and thresholds calibrated to hit a
target share of the sample within one prompt, written to the config or the router file."""

import csv
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.analysis import ANALYSIS, CODE, EXAMPLE_CONFIG, priced_config, run, run_json
from tests.helpers.services import shared_data
from workers.errors import ExitCode
from workers.routers import RouterError, make_router
from workers.routers.calibration import (
    build_router,
    classifier_thresholds,
    file_thresholds,
    last_threshold,
    route_sample,
    spaced_below,
    with_thresholds,
)
from workers.routers.classifier import load_classifier
from workers.routers.training import train_classifier
from workers.settings import RouterConfig, Settings, load_settings

UNREACHABLE = "http://127.0.0.1:9/v1"
TIERS = ["small", "medium", "frontier"]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def by_router(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["router"]: entry for entry in data["routers"]}


# --- known answers: the rules router on crafted prompts ---------------------------------

# (prompt, label, weak_correct, strong_correct, where the rules router sends it)
CRAFTED = [
    ("What is the capital of France?", "easy", 1, 1, "small"),  # short question
    (CODE, "hard", 0, 1, "frontier"),  # code keyword
    (ANALYSIS, "medium", 1, 1, "medium"),  # analysis keyword
    ("What is 2 + 2?", "frontier", 0, 1, "small"),  # labelled by tier name; rules miss it
    ("Debug this regex: ^a+$", "medium", 1, 0, "frontier"),  # code keyword over-routes
]


def crafted_file(tmp_path: Path) -> Path:
    rows = [
        {"prompt": p, "label": label, "weak_correct": w, "strong_correct": "true" if s else "no"}
        for p, label, w, s, _ in CRAFTED
    ]
    return write_csv(tmp_path / "crafted.csv", rows)


def test_rules_router_on_known_prompts(tmp_path: Path, use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    data = run_json("router", "eval", str(crafted_file(tmp_path)), "--routers", "rules")
    rules = by_router(data)["rules"]
    assert [entry["router"] for entry in data["routers"]] == ["rules", "random"]  # the baseline
    assert rules["accuracy"] == 3 / 5
    assert rules["confusion"] == {
        "small": {"small": 1, "medium": 0, "frontier": 0},
        "medium": {"small": 0, "medium": 1, "frontier": 1},
        "frontier": {"small": 1, "medium": 0, "frontier": 1},
    }
    assert rules["frontier_share"] == 2 / 5
    assert rules["tier_shares"] == {"small": 2 / 5, "medium": 1 / 5, "frontier": 2 / 5}
    # routed answers: weak, strong, weak, weak, strong → 1, 1, 1, 0, 0
    assert data["reference"] == {
        "all_weak_quality": 0.6, "all_strong_quality": 0.8, "target_quality": 0.76,
    }  # fmt: skip
    assert rules["quality"] == pytest.approx(0.6)
    assert rules["quality_vs_all_strong"] == pytest.approx(0.75)
    assert rules["curve"] == [
        {"frontier_share": 0.0, "quality": 0.6},
        {"frontier_share": 0.4, "quality": 0.6},
        {"frontier_share": 1.0, "quality": 0.8},
    ]
    assert rules["frontier_share_at_95"] == 1.0  # only everything on frontier gets there
    latency = rules["latency_ms"]
    assert latency["rows"] == 5 and 0 < latency["p50"] <= latency["p95"] < 100


def test_eval_prints_tables_and_draws_curves(tmp_path: Path, use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    plot = tmp_path / "curves.png"
    args = ("router", "eval", str(crafted_file(tmp_path)), "--routers", "rules")
    result = run(*args, "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert "rules: confusion matrix" in result.output and "60.0 %" in result.output
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_eval_skips_routers_that_cannot_run_here(tmp_path: Path, use_config: Any) -> None:
    use_config(priced_config(tmp_path / "d.toml", base_url=UNREACHABLE))
    missing = tmp_path / "nothing.joblib"
    data = run_json(
        "router", "eval", str(crafted_file(tmp_path)), "--routers", "classifier,llm",
        "--classifier", str(missing),
    )  # fmt: skip
    assert [entry["router"] for entry in data["routers"]] == ["random"]
    reasons = {entry["router"]: entry["reason"] for entry in data["skipped"]}
    assert "distillery router train" in reasons["classifier"]
    assert "did not answer" in reasons["llm"]


def test_eval_usage_errors(tmp_path: Path, use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    labelled = write_csv(tmp_path / "levels.csv", [{"prompt": "hi", "label": "easy"}])
    result = run("router", "eval", str(labelled), "--routers", "rules,oracle")
    assert result.exit_code == ExitCode.USAGE and "unknown router oracle" in result.output
    result = run("router", "eval", str(labelled), "--plot", str(tmp_path / "x.png"))
    assert result.exit_code == ExitCode.USAGE and "weak_correct" in result.output
    bad = write_csv(tmp_path / "bad.csv", [{"prompt": "hi", "label": "trivial"}])
    result = run("router", "eval", str(bad))
    assert result.exit_code == ExitCode.BAD_INPUT and "line 2" in result.output


# --- the random baseline ----------------------------------------------------------------


def test_random_curve_is_the_straight_line_between_weak_and_strong(
    tmp_path: Path, use_config: Any
) -> None:
    use_config(EXAMPLE_CONFIG)
    rng = random.Random(7)
    rows = [
        {"prompt": f"question {i}", "weak_correct": int(rng.random() < 0.65),
         "strong_correct": int(rng.random() < 0.85)}
        for i in range(5000)
    ]  # fmt: skip
    data = run_json("router", "eval", str(write_csv(tmp_path / "gen.csv", rows)))
    weak, strong = (data["reference"][k] for k in ("all_weak_quality", "all_strong_quality"))
    curve = by_router(data)["random"]["curve"]
    assert len(curve) > 90  # a point at least every 1 % of share
    for point in curve:
        line = weak + point["frontier_share"] * (strong - weak)
        assert point["quality"] == pytest.approx(line, abs=0.02)
    on_the_line = (0.95 * strong - weak) / (strong - weak)
    assert by_router(data)["random"]["frontier_share_at_95"] == pytest.approx(on_the_line, abs=0.05)


# --- a trained classifier on MMLU -------------------------------------------------------


@pytest.fixture(scope="module")
def mmlu_split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MMLU split 80/20 by a seeded shuffle; the classifier is trained on the 80 % only."""
    source = shared_data("mmlu_routing.csv")
    folder = tmp_path_factory.mktemp("mmlu")
    with source.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    random.Random(1).shuffle(rows)
    cut = len(rows) * 4 // 5
    train, held_out = (
        write_csv(folder / "train.csv", rows[:cut]),
        write_csv(folder / "held_out.csv", rows[cut:]),
    )
    router = folder / "router.joblib"
    train_classifier(train, router, seed=0)
    return {"source": source, "train": train, "held_out": held_out, "router": router}


def test_classifier_beats_random_on_held_out_mmlu(
    mmlu_split: dict[str, Path], use_config: Any
) -> None:
    use_config(EXAMPLE_CONFIG)
    data = run_json(
        "router", "eval", str(mmlu_split["held_out"]), "--routers", "classifier",
        "--classifier", str(mmlu_split["router"]),
    )  # fmt: skip
    got = by_router(data)
    classifier, baseline = (got[name]["frontier_share_at_95"] for name in ("classifier", "random"))
    print(f"frontier share at 95 %: classifier {classifier:.3f}, random {baseline:.3f}")
    assert classifier < baseline - 0.05


def test_evaluating_all_of_mmlu_is_fast(mmlu_split: dict[str, Path], use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    started = time.perf_counter()
    data = run_json(
        "router", "eval", str(mmlu_split["source"]), "--routers", "rules,classifier,random",
        "--classifier", str(mmlu_split["router"]),
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    print(f"router eval of {data['rows']} rows, three routers: {elapsed:.1f} s")
    assert data["rows"] == 14042 and len(data["routers"]) == 3
    assert elapsed < 60


# --- calibration ------------------------------------------------------------------------


def test_last_threshold_keeps_ties_together() -> None:
    scores = [0.9, 0.8, 0.8, 0.8, 0.2, 0.1]
    assert last_threshold(scores, 1) == pytest.approx(0.85)
    assert last_threshold(scores, 2) == pytest.approx(0.85)  # 1 is nearer than 4
    assert last_threshold(scores, 3) == pytest.approx(0.5)  # 4 is nearer than 1
    assert last_threshold(scores, 0) == pytest.approx(0.95)  # above everything, at most 1
    assert last_threshold(scores, 6) == 0.1
    for count in range(7):
        threshold = last_threshold([i / 10 for i in range(6)], count)
        assert sum(1 for i in range(6) if i / 10 >= threshold) == count  # distinct: exact


def test_lower_thresholds_keep_their_proportions() -> None:
    assert spaced_below([0.3, 0.7], 0.35) == (0.15, 0.35)
    assert spaced_below([0.5], 0.42) == (0.42,)
    assert spaced_below([0.25, 0.5, 0.75], 0.6) == (0.2, 0.4, 0.6)


def prompts_file(path: Path, count: int) -> Path:
    rows = [{"prompt": f"Tell me about item {i}, please."} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_calibrate_random_router_into_the_config_file(tmp_path: Path, use_config: Any) -> None:
    config = tmp_path / "distillery.toml"
    shutil.copy(EXAMPLE_CONFIG, config)
    use_config(config)
    sample = prompts_file(tmp_path / "sample.jsonl", 501)
    data = run_json(
        "router", "calibrate", str(sample), "--router", "random",
        "--target-frontier-share", "0.2", "--write-config", str(config),
    )  # fmt: skip
    assert data["target_count"] == 100 and data["achieved_count"] == 100  # round(0.2 * 501)
    # the rest of the file is untouched: only the thresholds line was added under [router]
    before = EXAMPLE_CONFIG.read_text(encoding="utf-8").splitlines()
    after = config.read_text(encoding="utf-8").splitlines()
    added = [line for line in after if line not in before]
    assert added == [f"thresholds = {data['thresholds']}"]
    assert after.index(added[0]) == before.index("[router]") + 1
    settings = load_settings(config)
    assert list(settings.router.thresholds) == data["thresholds"]
    router = make_router("random", settings=settings)
    texts = [json.loads(line)["prompt"] for line in sample.read_text().splitlines()]
    assert sum(1 for t in texts if router.decide_now(t).tier == "frontier") == 100


def test_calibrate_prints_the_toml_line_by_default(tmp_path: Path, use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    sample = prompts_file(tmp_path / "sample.jsonl", 40)
    result = run(
        "router", "calibrate", str(sample), "--router", "random", "--target-frontier-share", "0.25"
    )
    assert result.exit_code == 0, result.output
    assert "10 (25.00 %) go to frontier" in result.output
    assert "[router]\nthresholds = [" in result.output


def test_calibrate_classifier_into_its_file(
    mmlu_split: dict[str, Path], tmp_path: Path, use_config: Any
) -> None:
    use_config(EXAMPLE_CONFIG)
    router_file = tmp_path / "router.joblib"
    shutil.copy(mmlu_split["router"], router_file)  # the module's file stays uncalibrated
    data = run_json(
        "router", "calibrate", str(mmlu_split["held_out"]), "--target-frontier-share", "0.2",
        "--classifier", str(router_file), "--write-router",
    )  # fmt: skip
    assert abs(data["achieved_count"] - data["target_count"]) <= 1
    assert data["written_to"] == str(router_file)
    load_classifier(router_file)  # still a valid classifier file
    assert file_thresholds(router_file) == tuple(data["thresholds"])
    # the router built from the file routes the sample as calibrated, one decision at a time
    settings = Settings()
    router = build_router("classifier", settings=settings, classifier_path=router_file)
    texts = [row["prompt"] for row in csv.DictReader(mmlu_split["held_out"].open())]
    batch = [d.tier for d in route_sample(router, texts)]
    assert abs(batch.count("frontier") - round(0.2 * len(texts))) <= 1
    assert [router.decide_now(t).tier for t in texts[:300]] == batch[:300]  # one at a time too
    # thresholds set explicitly in the config win over the file's
    explicit = RouterConfig(thresholds=[0.3, 0.7])
    assert classifier_thresholds(router_file, explicit, TIERS) == (0.3, 0.7)
    assert classifier_thresholds(router_file, RouterConfig(), ["small", "frontier"]) == (0.5,)


def test_calibrate_refuses_conflicting_writes(tmp_path: Path, use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    sample = prompts_file(tmp_path / "sample.jsonl", 5)
    result = run(
        "router", "calibrate", str(sample), "--router", "random", "--target-frontier-share",
        "0.2", "--write-router",
    )  # fmt: skip
    assert result.exit_code == ExitCode.USAGE and "classifier file" in result.output


# --- editing the config file ------------------------------------------------------------


def test_thresholds_replace_a_multi_line_array_and_keep_comments() -> None:
    text = (
        "# my config\n[router]\nstrategy = \"classifier\"  # trained\n"
        "thresholds = [\n  0.3,  # medium\n  0.7,\n]\nfallback = [\"frontier\"]\n"
        "\n[teacher]\ntier = \"frontier\"\n"
    )  # fmt: skip
    edited = with_thresholds(text, [0.12, 0.34])
    assert edited == (
        "# my config\n[router]\nstrategy = \"classifier\"  # trained\n"
        "thresholds = [0.12, 0.34]\nfallback = [\"frontier\"]\n"
        "\n[teacher]\ntier = \"frontier\"\n"
    )  # fmt: skip


def test_thresholds_add_a_router_table_when_there_is_none() -> None:
    assert with_thresholds('database_url = "x"', [0.5]) == (
        'database_url = "x"\n\n[router]\nthresholds = [0.5]\n'
    )
    assert with_thresholds("", [0.5]) == "[router]\nthresholds = [0.5]\n"


def test_thresholds_in_an_unusual_layout_are_left_to_the_user() -> None:
    with pytest.raises(RouterError, match="set it by hand"):
        with_thresholds('router.strategy = "rules"\n', [0.2, 0.6])
