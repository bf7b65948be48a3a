"""Train the classifier router from labelled prompts (see `labeled` for the file formats).

TF-IDF over word unigrams and bigrams, then a logistic regression whose classes are
difficulty steps. class_weight="balanced": on mmlu_routing.csv (18 % of prompts need the
strong model) it matched the unweighted held-out AUC (0.6643 vs 0.6637, mean of three
seeds) and centres the scores, where unweighted ones sit near the 18 % base rate and the
default thresholds would send almost everything to the first tier. C=0.3 was the best of
0.1 / 0.3 / 1.0 on the same splits. With a signal this weak the scores still bunch (on
MMLU the 5th-95th percentiles are 0.32-0.73), so set [router] thresholds for the traffic
split you want.

The saved model is the one fitted on the training split, so the held-out numbers in the
report describe exactly the file that was written.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler

from workers.routers.base import RouterError
from workers.routers.classifier import HARDEST_STEP, DifficultyModel, save_classifier
from workers.routers.features import (
    DEFAULT_FEATURES,
    EmbeddingFeatures,
    StructuralFeatures,
    VocabularyNovelty,
    novelty_threshold,
    require_features,
)
from workers.routers.labeled import load_labeled

__all__ = ["TrainReport", "build_pipeline", "load_labeled", "train_classifier"]

MAX_FEATURES = 50_000
REGULARISATION_C = 0.3
# below this many training rows, terms seen only once are kept: a tiny file would lose all
MIN_ROWS_FOR_MIN_DF = 200


@dataclass
class TrainReport:
    rows: int
    train_rows: int
    test_rows: int
    positive_rate: float  # share of rows labelled hardest (difficulty 1.0)
    held_out_accuracy: float  # predicted difficulty step == labelled step
    held_out_auc: float | None  # hardest vs the rest; None when the test split lacks either
    path: str
    kind: str  # "binary" (two difficulty levels seen) or "levels" (three)
    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))
    calibrated: bool = False  # Platt-scaled on the held-out rows
    thresholds: list[float] | None = None  # chosen at training time, stored in the file
    target_frontier_share: float | None = None
    held_out_frontier_share: float | None = None  # what those thresholds send there


@dataclass
class _Split:
    train_texts: list[str]
    train_steps: list[int]
    test_texts: list[str]
    test_steps: list[int]


def build_pipeline(train_rows: int, features: Sequence[str] = DEFAULT_FEATURES) -> Pipeline:
    """The feature sets side by side (dense ones standardised), then one logistic
    regression over all of them."""
    parts = [(name, _feature_step(name, train_rows)) for name in features]
    model = LogisticRegression(class_weight="balanced", C=REGULARISATION_C, max_iter=1000)
    if len(parts) == 1:
        return Pipeline([*parts, ("model", model)])
    return Pipeline([("features", FeatureUnion(parts)), ("model", model)])


def _feature_step(name: str, train_rows: int) -> Any:
    if name == "tfidf":
        return TfidfVectorizer(
            ngram_range=(1, 2),
            min_df=2 if train_rows >= MIN_ROWS_FOR_MIN_DF else 1,
            sublinear_tf=True,
            max_features=MAX_FEATURES,
        )
    dense = StructuralFeatures() if name == "structural" else EmbeddingFeatures()
    return Pipeline([(name, dense), ("scale", StandardScaler())])


def train_classifier(
    path: Path,
    out: Path,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    tiers: Sequence[str] | None = None,
    features: Sequence[str] = DEFAULT_FEATURES,
    frontier_share: float | None = None,
    thresholds: Sequence[float] | None = None,
) -> TrainReport:
    """Fit on a seeded split of `path`, calibrate and choose thresholds on the rest (see
    `fit_split`), measure there, save to `out`."""
    if not 0 < test_fraction < 1:
        raise RouterError(f"test fraction must be between 0 and 1, got {test_fraction}")
    path, out = Path(path), Path(out)
    texts, difficulties = load_labeled(path, tiers=tiers or ())
    steps = [round(d * HARDEST_STEP) for d in difficulties]
    _require_two_levels(path, steps)
    split = _split(path, texts, steps, test_fraction, seed)
    kind = "binary" if len(set(steps)) == 2 else "levels"
    try:
        model = _fit(split, kind=kind, trained_on=path.name, rows=len(texts), features=features)
    except ValueError as exc:  # e.g. prompts with no words in them: nothing to learn from
        raise RouterError(f"{path}: cannot train on these prompts: {exc}") from None
    choice = choose_thresholds(model, split, frontier_share, thresholds)
    save_with_thresholds(out, model, choice, tiers)
    report = _report(model, split, out, rows=len(texts), positive=steps.count(HARDEST_STEP))
    return with_choice(report, choice)


def save_with_thresholds(
    out: Path, model: DifficultyModel, choice: "ThresholdChoice | None", tiers: Any
) -> None:
    if choice is None:
        save_classifier(out, model)
        return
    calibration = {
        "tiers": list(tiers or ()),
        "target_share": choice.target_share,
        "rows": choice.rows,
        "achieved_count": round(choice.achieved_share * choice.rows),
        "at": "training",
    }
    save_classifier(out, model, thresholds=choice.thresholds, calibration=calibration)


def with_choice(report: "TrainReport", choice: "ThresholdChoice | None") -> "TrainReport":
    report.features = list(report.features)
    if choice is not None:
        report.thresholds = list(choice.thresholds)
        report.target_frontier_share = choice.target_share
        report.held_out_frontier_share = choice.achieved_share
    return report


def _require_two_levels(path: Path, steps: list[int]) -> None:
    if len(set(steps)) < 2:
        raise RouterError(
            f"{path}: every row has the same difficulty; a router needs examples of at "
            f"least two levels to learn from"
        )


def _split(
    path: Path, texts: list[str], steps: list[int], test_fraction: float, seed: int
) -> _Split:
    indices = list(range(len(texts)))
    try:
        train, test = _train_test_indices(indices, steps, test_fraction, seed)
    except ValueError as exc:  # e.g. too few rows to hold any out
        raise RouterError(f"{path}: cannot split {len(texts)} rows for training: {exc}") from None
    if len({steps[i] for i in train}) < 2:
        raise RouterError(f"{path}: too few rows: the training split has only one level")
    return _Split(
        [texts[i] for i in train], [steps[i] for i in train],
        [texts[i] for i in test], [steps[i] for i in test],
    )  # fmt: skip


def _train_test_indices(
    indices: list[int], steps: list[int], test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Stratified by level when every level has two rows to share out; a plain seeded
    shuffle otherwise (small hand-labelled files)."""
    stratify: list[int] | None = steps if min(Counter(steps).values()) >= 2 else None
    try:
        train, test = train_test_split(
            indices, test_size=test_fraction, random_state=seed, stratify=stratify
        )
    except ValueError:
        if stratify is None:
            raise
        train, test = train_test_split(indices, test_size=test_fraction, random_state=seed)
    return list(train), list(test)


def fit_model(
    texts: Sequence[str],
    steps: Sequence[int],
    *,
    features: Sequence[str] = DEFAULT_FEATURES,
    kind: str = "binary",
    trained_on: str = "",
) -> DifficultyModel:
    """The pipeline over `features` fitted on these rows (uncalibrated)."""
    require_features(features)
    pipeline = build_pipeline(len(texts), features)
    pipeline.fit(list(texts), list(steps))
    _drop_pruned_terms(pipeline)
    return DifficultyModel(
        pipeline,
        kind=kind,
        trained_on=trained_on,
        rows=len(texts),
        features=features,
        novelty=VocabularyNovelty.fit(texts),
    )


def _fit(
    split: _Split,
    *,
    kind: str,
    trained_on: str,
    rows: int,
    features: Sequence[str] = DEFAULT_FEATURES,
) -> DifficultyModel:
    """Fitted on the training split, then Platt-scaled on the held-out one: the scores
    become probabilities that a prompt needs the last tier, measured on rows the pipeline
    never saw. Platt's map is monotone, so rankings (AUC, the cost-quality curve) stay."""
    model = fit_model(
        split.train_texts, split.train_steps, features=features, kind=kind, trained_on=trained_on
    )
    model.rows = rows
    model.platt = platt_fit(model.raw_score(split.test_texts), split.test_steps)
    if model.novelty is not None and split.test_texts:
        model.novelty_threshold = novelty_threshold(model.novelty.score(split.test_texts))
    return model


def platt_fit(
    raw: Sequence[float] | np.ndarray, steps: Sequence[int]
) -> tuple[float, float] | None:
    """(slope, intercept) of P(hardest | raw score); None when the held-out rows have only
    one level (nothing to calibrate against)."""
    hardest = [int(step == HARDEST_STEP) for step in steps]
    if len(set(hardest)) < 2:
        return None
    scaler = LogisticRegression(C=1e6, max_iter=1000)  # no penalty: a plain Platt fit
    scaler.fit([[value] for value in raw], hardest)
    return float(scaler.coef_[0][0]), float(scaler.intercept_[0])


@dataclass(frozen=True)
class ThresholdChoice:
    thresholds: tuple[float, ...]
    target_share: float  # of the held-out rows meant for the last tier
    achieved_share: float
    rows: int  # held-out rows they were chosen on


def choose_thresholds(
    model: DifficultyModel,
    split: _Split,
    frontier_share: float | None,
    previous: Sequence[float] | None,
) -> ThresholdChoice | None:
    """Thresholds sending `frontier_share` of the held-out rows to the last tier (default:
    the share labelled hardest), lower ones in the proportions of `previous` (the config's).
    None without `previous`: the tiers are not known, so neither is the number of cuts."""
    if not previous or not split.test_texts:
        return None
    from workers.routers.calibration import calibrate

    share = frontier_share
    if share is None:
        share = split.train_steps.count(HARDEST_STEP) / len(split.train_steps)
    result = calibrate(model.score(split.test_texts), target_share=share, previous=previous)
    return ThresholdChoice(result.thresholds, share, result.achieved_share, result.rows)


def _drop_pruned_terms(pipeline: Pipeline) -> None:
    # older scikit-learn keeps every term it pruned (millions of bigrams) only for
    # introspection; it would make the file many times larger and slower to load
    steps: dict[str, Any] = dict(pipeline.named_steps)
    if "features" in steps:
        steps = dict(steps["features"].transformer_list)
    vectoriser = steps.get("tfidf")
    if vectoriser is not None and hasattr(vectoriser, "stop_words_"):
        vectoriser.stop_words_ = None


def _report(
    model: DifficultyModel, split: _Split, out: Path, *, rows: int, positive: int
) -> TrainReport:
    predicted = model.pipeline.predict(split.test_texts)
    scores = model.score(split.test_texts)
    return TrainReport(
        rows=rows,
        train_rows=len(split.train_texts),
        test_rows=len(split.test_texts),
        positive_rate=positive / rows,
        held_out_accuracy=float(accuracy_score(split.test_steps, predicted)),
        held_out_auc=_hardest_vs_rest_auc(split.test_steps, scores),
        path=str(out),
        kind=model.kind,
        features=list(model.features),
        calibrated=model.platt is not None,
    )


def _hardest_vs_rest_auc(steps: list[int], scores: list[float]) -> float | None:
    hardest = [step == max(steps) for step in steps]
    if all(hardest) or not any(hardest):
        return None
    return float(roc_auc_score(hardest, scores))
