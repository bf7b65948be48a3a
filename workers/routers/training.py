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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from workers.routers.base import RouterError
from workers.routers.classifier import HARDEST_STEP, DifficultyModel, save_classifier
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


@dataclass
class _Split:
    train_texts: list[str]
    train_steps: list[int]
    test_texts: list[str]
    test_steps: list[int]


def build_pipeline(train_rows: int) -> Pipeline:
    vectoriser = TfidfVectorizer(
        ngram_range=(1, 2),
        min_df=2 if train_rows >= MIN_ROWS_FOR_MIN_DF else 1,
        sublinear_tf=True,
        max_features=MAX_FEATURES,
    )
    model = LogisticRegression(class_weight="balanced", C=REGULARISATION_C, max_iter=1000)
    return Pipeline([("tfidf", vectoriser), ("model", model)])


def train_classifier(
    path: Path,
    out: Path,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    tiers: Sequence[str] | None = None,
) -> TrainReport:
    """Fit on a seeded split of `path`, measure on the rest, save to `out`."""
    if not 0 < test_fraction < 1:
        raise RouterError(f"test fraction must be between 0 and 1, got {test_fraction}")
    path, out = Path(path), Path(out)
    texts, difficulties = load_labeled(path, tiers=tiers or ())
    steps = [round(d * HARDEST_STEP) for d in difficulties]
    _require_two_levels(path, steps)
    split = _split(path, texts, steps, test_fraction, seed)
    kind = "binary" if len(set(steps)) == 2 else "levels"
    try:
        model = _fit(split, kind=kind, trained_on=path.name, rows=len(texts))
    except ValueError as exc:  # e.g. prompts with no words in them: nothing to learn from
        raise RouterError(f"{path}: cannot train on these prompts: {exc}") from None
    save_classifier(out, model)
    return _report(model, split, out, rows=len(texts), positive=steps.count(HARDEST_STEP))


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


def _fit(split: _Split, *, kind: str, trained_on: str, rows: int) -> DifficultyModel:
    pipeline = build_pipeline(len(split.train_texts))
    pipeline.fit(split.train_texts, split.train_steps)
    _drop_pruned_terms(pipeline)
    return DifficultyModel(pipeline, kind=kind, trained_on=trained_on, rows=rows)


def _drop_pruned_terms(pipeline: Pipeline) -> None:
    # older scikit-learn keeps every term it pruned (millions of bigrams) only for
    # introspection; it would make the file many times larger and slower to load
    vectoriser: Any = pipeline.named_steps["tfidf"]
    if hasattr(vectoriser, "stop_words_"):
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
    )


def _hardest_vs_rest_auc(steps: list[int], scores: list[float]) -> float | None:
    hardest = [step == max(steps) for step in steps]
    if all(hardest) or not any(hardest):
        return None
    return float(roc_auc_score(hardest, scores))
