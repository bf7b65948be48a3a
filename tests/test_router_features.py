"""What the classifier sees and what its scores mean: structural features of known prompts,
feature sets stacked in `router train`, Platt-scaled scores whose mean matches the hard
share on rows never trained on, thresholds chosen at training time and stored in the file,
and a file needing embeddings refused with the install command where llama.cpp is absent."""

import csv
import random
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from tests.helpers.analysis import EXAMPLE_CONFIG, run, run_json
from tests.helpers.services import shared_data
from tests.test_evaluation import write_csv
from workers.errors import ExitCode
from workers.routers import RouterError
from workers.routers.calibration import build_router
from workers.routers.classifier import load_classifier
from workers.routers.features import STRUCTURAL_NAMES, parse_features, structural_row
from workers.settings import load_settings


def features_of(text: str) -> dict[str, float]:
    return dict(zip(STRUCTURAL_NAMES, structural_row(text), strict=True))


def test_structural_features_of_known_prompts() -> None:
    choice = features_of("Which of these is NOT prime?\nA. 2\nB. 3\nC. 9\nD. 11")
    assert choice["choices"] == 4 and choice["negation"] == 1 and choice["wh_start"] == 1
    assert choice["log_numbers"] == pytest.approx(np.log1p(4))
    assert choice["question_marks"] == 1 and choice["log_lines"] == pytest.approx(np.log1p(5))
    code = features_of("```\ndef f(x):\n    return x == 1;\n```")
    assert code["code_block"] == 1 and code["log_code_markers"] > np.log1p(3)
    plain = features_of("Tell me a story about a cat")
    assert plain["choices"] == 0 and plain["log_operators"] == 0 and plain["code_block"] == 0
    maths = features_of("Compute 12 * 7 + 3 = ?")
    assert maths["log_operators"] == pytest.approx(np.log1p(3)) and maths["math_words"] > 0


def test_feature_set_names() -> None:
    assert parse_features("structural+tfidf") == ("tfidf", "structural")
    assert parse_features(["embedding"]) == ("embedding",)
    with pytest.raises(RouterError, match="unknown feature set words"):
        parse_features("tfidf+words")


def mmlu_slices(tmp_path: Path, sizes: tuple[int, int]) -> tuple[Path, Path]:
    """Two disjoint seeded slices of the MMLU labels: one to train on, one never seen."""
    with shared_data("mmlu_routing.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    random.Random(7).shuffle(rows)
    train = write_csv(tmp_path / "train.csv", rows[: sizes[0]])
    unseen = write_csv(tmp_path / "unseen.csv", rows[sizes[0] : sizes[0] + sizes[1]])
    return train, unseen


def test_training_stacks_features_calibrates_and_stores_thresholds(
    tmp_path: Path, use_config: Any
) -> None:
    use_config(EXAMPLE_CONFIG)
    train, unseen = mmlu_slices(tmp_path, (3000, 2000))
    out = tmp_path / "router.joblib"
    report = run_json(
        "router", "train", str(train), "--out", str(out),
        "--features", "tfidf+structural", "--target-frontier-share", "0.4",
    )  # fmt: skip
    assert report["features"] == ["tfidf", "structural"] and report["calibrated"]
    assert report["target_frontier_share"] == 0.4
    assert abs(report["held_out_frontier_share"] - 0.4) <= 1 / report["test_rows"]
    stored = joblib.load(out)
    assert stored["thresholds"] == report["thresholds"] and len(stored["thresholds"]) == 2
    assert stored["calibration"]["at"] == "training" and stored["features"] == report["features"]
    settings = load_settings(EXAMPLE_CONFIG)
    router = build_router("classifier", settings=settings, classifier_path=out)
    assert list(router.thresholds) == report["thresholds"]  # type: ignore[attr-defined]
    # calibrated: on 2,000 rows it never saw, the mean probability is the hard share
    model = load_classifier(out)
    with unseen.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    hard = np.mean([r["weak_correct"] == "False" and r["strong_correct"] == "True" for r in rows])
    predicted = np.mean(model.score([r["prompt"] for r in rows]))
    assert abs(predicted - hard) < 0.03
    raw = model.raw_score([r["prompt"] for r in rows])
    assert np.argsort(raw).tolist() == np.argsort(model.calibrated(raw)).tolist()  # monotone


def test_default_target_share_is_the_hard_share(tmp_path: Path, use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    train, _ = mmlu_slices(tmp_path, (1500, 1))
    report = run_json("router", "train", str(train), "--out", str(tmp_path / "r.joblib"))
    assert report["target_frontier_share"] == pytest.approx(report["positive_rate"], abs=0.01)
    result = run("router", "train", str(train), "--out", str(tmp_path / "r2.joblib"))
    assert result.exit_code == 0 and "(stored in the file)" in result.output


def test_unknown_feature_set_is_a_usage_error(tmp_path: Path, use_config: Any) -> None:
    use_config(EXAMPLE_CONFIG)
    train, _ = mmlu_slices(tmp_path, (200, 1))
    result = run("router", "train", str(train), "--features", "tfidf+vibes")
    assert result.exit_code == ExitCode.USAGE and "unknown feature set vibes" in result.output


def test_an_embedding_router_without_llama_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.routers.training import fit_model

    rows = [(f"What is {i} plus {i}?", 0) for i in range(10)]
    rows += [(f"Prove lemma {i} on prime gaps", 2) for i in range(10)]
    model = fit_model([t for t, _ in rows], [s for _, s in rows], features=("structural",))
    data = model.to_file_dict()
    data["features"] = ["embedding"]  # as an embedding router's file records it
    path = tmp_path / "embedding.joblib"
    joblib.dump(data, path)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now fails
    with pytest.raises(RouterError, match=r"embedding features; install the llama extra"):
        load_classifier(path)
    with pytest.raises(RouterError, match="install the llama extra"):
        fit_model(["a", "b"], [0, 2], features=("embedding",))


def test_a_prompt_unlike_the_training_data_is_deferred_to_the_cascade(
    tmp_path: Path, use_config: Any
) -> None:
    from tests.test_generalisation import synthetic_rows

    use_config(EXAMPLE_CONFIG)
    rows = [r for r in synthetic_rows(per_domain=60) if r["domain"] in ("cooking", "law")]
    out = tmp_path / "router.joblib"
    run_json("router", "train", str(write_csv(tmp_path / "t.csv", rows)), "--out", str(out))
    model = load_classifier(out)
    assert model.novelty is not None and model.novelty_threshold is not None
    settings = load_settings(EXAMPLE_CONFIG)
    router = build_router("classifier", settings=settings, classifier_path=out)
    known = router.decide_now("Tell me about the onion simmer saffron pastry in a sentence")
    unknown = router.decide_now("Describe quasar redshift spectroscopy photometry briefly")
    assert not known.deferred
    assert unknown.deferred and unknown.tier == "small" and unknown.score is not None
    batch = router.decisions(["Tell me about the tort appeal", "Explain quasar photometry"])  # type: ignore[attr-defined]
    assert [d.deferred for d in batch] == [False, True]
    kept = settings.model_copy(
        update={"router": settings.router.model_copy(update={"defer_out_of_distribution": False})}
    )
    trusting = build_router("classifier", settings=kept, classifier_path=out)
    assert not trusting.decide_now("Describe quasar redshift spectroscopy photometry").deferred
