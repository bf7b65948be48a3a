"""Does a router generalise? Cross-validated evaluation on a labelled file with a domain
column, in two protocols side by side:

* **in-domain**: folds over rows (seeded shuffle): every test domain was seen in training;
* **out-of-domain** (leave domains out): folds over domains, each domain's rows all in one
  fold, so every test prompt comes from a domain the router never saw.

Each fold trains the classifier on the other folds (the same pipeline `router train`
fits, for each requested feature set) and scores its own rows. A protocol's figure is the
row-weighted mean of its folds' figures (`route_stats.figures`): frontier share at 95 % of
all-frontier quality, and quality at a chosen share. Folds are scored apart because each
fold's model has its own score scale, and a deployed router's thresholds are set on its
own traffic (`router calibrate`), never across models.

Confidence intervals: a stratified bootstrap, each replicate resampling the rows of every
fold with replacement (the models stay fixed: the interval covers which prompts the test
happened to contain, not retraining). The router's saving against random is computed in
the same replicate as both figures, so its interval is for the paired difference; "clear
of random" means its lower end is above zero.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from producer.costs import read_records
from producer.evaluation import latency_summary, read_labelled
from producer.route_stats import figures, percentile_interval, resample_weights
from workers.routers.base import RouterError, elapsed_ms
from workers.routers.features import (
    VocabularyNovelty,
    clear_embedding_cache,
    novelty_threshold,
    parse_features,
)
from workers.routers.training import fit_model

DOMAIN_COLUMN = "domain"
DEFAULT_FOLDS = 5
DEFAULT_BOOTSTRAP = 1000
DEFAULT_SHARE = 0.2  # quality is also reported at this last-tier share
LATENCY_ROWS = 200  # single decisions timed per feature set
PROTOCOLS = ("in_domain", "out_of_domain")

Indices = NDArray[np.int64]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class DomainLabelled:
    texts: list[str]
    weak: NDArray[np.float64]
    strong: NDArray[np.float64]
    domains: list[str]

    @property
    def steps(self) -> list[int]:
        """2 (hard) where only the strong model was right, else 0: `router train`'s labels."""
        return [2 * int(s > 0 and w == 0) for w, s in zip(self.weak, self.strong, strict=True)]


def read_domain_labelled(
    path: Path, tiers: Sequence[str], column: str = DOMAIN_COLUMN
) -> DomainLabelled:
    """Prompts with weak/strong correctness and a domain; RouterError listing bad lines."""
    data = read_labelled(path, tiers)
    if data.weak is None or data.strong is None:
        raise RouterError(
            f"{path}: leave-domains-out evaluation needs 'weak_correct' and 'strong_correct' "
            "columns (quality is what it measures)"
        )
    records = read_records(path)
    if column not in records[0][1]:
        found = ", ".join(records[0][1])
        raise RouterError(
            f"{path}: no '{column}' column to leave domains out by (found: {found}); "
            "name another with --domain-column"
        )
    empty = [line for line, record in records if not str(record.get(column) or "").strip()]
    if empty:
        shown = ", ".join(str(line) for line in empty[:20])
        raise RouterError(f"{path}: {len(empty)} row(s) without a {column}: line(s) {shown}")
    domains = [str(record[column]).strip() for _, record in records]
    if len(set(domains)) < 2:
        raise RouterError(f"{path}: only one {column}; leaving domains out needs two or more")
    return DomainLabelled(
        data.texts, np.asarray(data.weak, float), np.asarray(data.strong, float), domains
    )


def subsample(data: DomainLabelled, size: int | None, seed: int = 0) -> DomainLabelled:
    """A seeded sample of rows, in file order (all of them when `size` is None)."""
    if size is None or size >= len(data.texts):
        return data
    chosen = np.sort(np.random.default_rng(seed).choice(len(data.texts), size, replace=False))
    return DomainLabelled(
        [data.texts[i] for i in chosen],
        data.weak[chosen],
        data.strong[chosen],
        [data.domains[i] for i in chosen],
    )


# --- folds ---------------------------------------------------------------------------------


def row_folds(rows: int, folds: int, seed: int) -> list[Indices]:
    """`folds` test sets of about equal size over a seeded shuffle of the rows."""
    order = np.random.default_rng(seed).permutation(rows)
    return [np.sort(part) for part in np.array_split(order, folds)]


def domain_folds(domains: Sequence[str], folds: int, seed: int) -> list[Indices]:
    """`folds` test sets, each a set of whole domains, balanced by rows: domains in a seeded
    order, largest first, each to the fold with the fewest rows so far."""
    names = sorted(set(domains))
    if folds > len(names):
        raise RouterError(f"{folds} folds but only {len(names)} domains; use --folds {len(names)}")
    sizes = {name: 0 for name in names}
    for name in domains:
        sizes[name] += 1
    shuffled = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    shuffled.sort(key=lambda name: -sizes[name])  # stable: the seed orders equal sizes
    members: list[set[str]] = [set() for _ in range(folds)]
    load = [0] * folds
    for name in shuffled:
        lightest = load.index(min(load))
        members[lightest].add(name)
        load[lightest] += sizes[name]
    labels = np.asarray(domains)
    return [np.nonzero(np.isin(labels, sorted(group)))[0] for group in members]


# --- scoring -------------------------------------------------------------------------------


@dataclass
class FoldScores:
    test: Indices
    scores: dict[str, NDArray[np.float64]]  # feature set → the fold's test scores
    domains: list[str]
    deferred: NDArray[np.bool_] | None = None  # test rows the novelty score sends to the cascade


NOVELTY_HOLD_OUT = 0.1  # of a fold's training rows, to set its novelty threshold on


def fold_novelty(
    data: DomainLabelled, train: Indices, test: Indices, seed: int
) -> NDArray[np.bool_]:
    """Which test rows are out of distribution, as a router trained on `train` would judge:
    the vocabulary from 90 % of its rows, the threshold from the other 10 % (in-domain)."""
    order = np.random.default_rng(seed).permutation(train)
    cut = max(1, int(len(order) * NOVELTY_HOLD_OUT))
    novelty = VocabularyNovelty.fit([data.texts[i] for i in order[cut:]])
    threshold = novelty_threshold(novelty.score([data.texts[i] for i in order[:cut]]))
    return novelty.score([data.texts[i] for i in test]) > threshold


def cross_validated_scores(
    data: DomainLabelled,
    folds: Sequence[Indices],
    feature_sets: Sequence[str],
    progress: Progress = lambda _: None,
) -> tuple[list[FoldScores], dict[str, list[float]]]:
    """Each fold's test rows scored by a model fitted on the other folds, per feature set;
    and, per feature set, single-decision latencies of the last fold's model on new prompts."""
    steps = data.steps
    results, latencies = [], {}
    for number, test in enumerate(folds, start=1):
        train = np.setdiff1d(np.arange(len(data.texts)), test)
        _require_both_levels(steps, train, number)
        fold = FoldScores(test, {}, sorted({data.domains[i] for i in test}))
        fold.deferred = fold_novelty(data, train, test, seed=number)
        for name in feature_sets:
            progress(f"fold {number}/{len(folds)}: training {name}")
            model = fit_model(
                [data.texts[i] for i in train], [steps[i] for i in train],
                features=parse_features(name),
            )  # fmt: skip
            texts = [data.texts[i] for i in test]
            fold.scores[name] = np.asarray(model.score(texts))
            if number == len(folds):
                latencies[name] = _decision_latencies(model, texts)
        results.append(fold)
    return results, latencies


def _require_both_levels(steps: list[int], train: Indices, number: int) -> None:
    if len({steps[i] for i in train}) < 2:
        raise RouterError(f"fold {number}: its training rows have only one level; use more rows")


def _decision_latencies(model: Any, texts: list[str]) -> list[float]:
    """One prompt at a time, as a worker decides, on prompts whose embeddings are not
    cached from training."""
    clear_embedding_cache()
    step = max(1, len(texts) // LATENCY_ROWS)
    timings = []
    for text in texts[::step][:LATENCY_ROWS]:
        started = time.perf_counter()
        model.score([text])
        timings.append(elapsed_ms(started))
    return timings


# --- summarising ---------------------------------------------------------------------------


def summarise(
    data: DomainLabelled,
    folds: Sequence[FoldScores],
    *,
    share: float,
    bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Point figures and bootstrap intervals for random, the oracle and each feature set."""
    names = list(folds[0].scores)
    point = _mean_over_folds(data, folds, names, share, weights=None)
    rng = np.random.default_rng(seed)
    replicates = [
        _mean_over_folds(
            data, folds, names, share, weights=[resample_weights(rng, f.test.size) for f in folds]
        )
        for _ in range(bootstrap)
    ]
    rows = [_row(key, point, replicates) for key in ["random", "oracle", *names]]
    for row in rows[2:]:
        row["saves_vs_random"] = _saving(row["router"], point, replicates)
    return {
        "rows": rows,
        "folds": [_fold_entry(data, fold, names, share) for fold in folds],
        "deferral": _deferral(data, folds),
    }


def _deferral(data: DomainLabelled, folds: Sequence[FoldScores]) -> dict[str, Any]:
    """How often the novelty score would defer to the cascade, and how hard those prompts
    are (share needing the last tier) against the rest."""
    flags = [fold.deferred for fold in folds if fold.deferred is not None]
    if not flags:
        return {}
    rows = np.concatenate([fold.test for fold in folds if fold.deferred is not None])
    deferred = np.concatenate(flags)
    hard = np.asarray(data.steps)[rows] > 0
    return {
        "share": round(float(deferred.mean()), 6),
        "hard_share_deferred": round(float(hard[deferred].mean()), 6) if deferred.any() else None,
        "hard_share_kept": round(float(hard[~deferred].mean()), 6) if (~deferred).any() else None,
    }


def _mean_over_folds(
    data: DomainLabelled,
    folds: Sequence[FoldScores],
    names: list[str],
    share: float,
    weights: list[NDArray[np.float64]] | None,
) -> dict[str, tuple[float, float]]:
    """{router: (share at 95 %, quality at the share)}, row-weighted over folds."""
    totals: dict[str, np.ndarray] = {}
    for number, fold in enumerate(folds):
        counts = None if weights is None else weights[number]
        weak, strong = data.weak[fold.test], data.strong[fold.test]
        for key, value in _fold_figures(fold, weak, strong, names, share, counts).items():
            totals[key] = totals.get(key, np.zeros(2)) + fold.test.size * np.asarray(value)
    rows = sum(fold.test.size for fold in folds)
    return {key: (float(v[0] / rows), float(v[1] / rows)) for key, v in totals.items()}


def _fold_figures(
    fold: FoldScores,
    weak: np.ndarray,
    strong: np.ndarray,
    names: list[str],
    share: float,
    counts: np.ndarray | None,
) -> dict[str, tuple[float, float]]:
    found = {}
    for number, name in enumerate(names):
        result = figures(fold.scores[name], weak, strong, share=share, weights=counts)
        if number == 0:
            found["random"] = _pair(result["random"])
            found["oracle"] = _pair(result["oracle"])
        found[name] = _pair(result["router"])
    return found


def _pair(value: Any) -> tuple[float, float]:
    return value.share_at_target, value.quality_at_share


def _row(
    key: str, point: dict[str, tuple[float, float]], replicates: list[dict[str, Any]]
) -> dict[str, Any]:
    shares = [r[key][0] for r in replicates]
    qualities = [r[key][1] for r in replicates]
    return {
        "router": key,
        "frontier_share_at_95": round(point[key][0], 6),
        "frontier_share_at_95_ci": _interval(shares, point[key][0]),
        "quality_at_share": round(point[key][1], 6),
        "quality_at_share_ci": _interval(qualities, point[key][1]),
    }


def _saving(
    key: str, point: dict[str, tuple[float, float]], replicates: list[dict[str, Any]]
) -> dict[str, Any]:
    """Frontier share random needs minus what the router needs, with its paired interval."""
    differences = [r["random"][0] - r[key][0] for r in replicates]
    value = point["random"][0] - point[key][0]
    interval = _interval(differences, value)
    clear = interval[0] > 0 if differences else None  # no resamples: no interval to judge
    return {"share": round(value, 6), "ci": interval, "clear": clear}


def _interval(values: list[float], point: float) -> list[float]:
    if not values:  # --bootstrap 0: no interval, only the point
        return [round(point, 6), round(point, 6)]
    low, high = percentile_interval(values)
    return [round(low, 6), round(high, 6)]


def _fold_entry(
    data: DomainLabelled, fold: FoldScores, names: list[str], share: float
) -> dict[str, Any]:
    weak, strong = data.weak[fold.test], data.strong[fold.test]
    found = _fold_figures(fold, weak, strong, names, share, None)
    return {
        "rows": int(fold.test.size),
        "domains": fold.domains,
        "frontier_share_at_95": {key: round(value[0], 6) for key, value in found.items()},
    }


def _prefixed(progress: Progress, protocol: str) -> Progress:
    return lambda text: progress(f"{protocol}: {text}")


# --- the whole evaluation ------------------------------------------------------------------


def evaluate_generalisation(
    data: DomainLabelled,
    *,
    feature_sets: Sequence[str],
    folds: int = DEFAULT_FOLDS,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    share: float = DEFAULT_SHARE,
    seed: int = 0,
    protocols: Sequence[str] = PROTOCOLS,
    progress: Progress = lambda _: None,
) -> dict[str, Any]:
    if folds < 2:
        raise RouterError(f"cross-validation needs at least 2 folds, got {folds}")
    result: dict[str, Any] = {
        "rows": len(data.texts),
        "domains": len(set(data.domains)),
        "folds": folds,
        "bootstrap": bootstrap,
        "quality_share": share,
        "seed": seed,
        "feature_sets": list(feature_sets),
    }
    for protocol in protocols:
        splits = (
            row_folds(len(data.texts), folds, seed)
            if protocol == "in_domain"
            else domain_folds(data.domains, folds, seed)
        )
        scored, latencies = cross_validated_scores(
            data, splits, feature_sets, _prefixed(progress, protocol)
        )
        summary = summarise(data, scored, share=share, bootstrap=bootstrap, seed=seed)
        summary["latency_ms"] = {name: latency_summary(v) for name, v in latencies.items()}
        result[protocol] = summary
    return result
