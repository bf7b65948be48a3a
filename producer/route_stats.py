"""The arithmetic of judging a router on labelled prompts, vectorised so a bootstrap of a
thousand resamples of 14,000 rows takes a second, not minutes.

Every prompt has `weak` (the cheap model answered it correctly) and `strong` (the last tier
did). Sending the k highest-scoring prompts to the last tier gives quality
(sum of weak over the rest + sum of strong over the k) / n. Prompts with equal scores move
together, since no threshold separates them, so the curve has one point per tie group.

Three rows are always computed beside a router:

* **random**: a score that ignores the prompt. In expectation its curve is the straight
  line from all-weak quality W (share 0) to all-strong quality S (share 1), so it reaches a
  quality target T at share (T - W) / (S - W). The expectation, not one seeded draw: a draw
  would put the baseline's own sampling noise into every comparison.
* **oracle**: knows which prompts need the last tier (weak wrong, strong right) and sends
  those first, one at a time. No router can do better on these labels.
* the router itself.

`weights` (a count per row) express a bootstrap resample without copying rows: a row drawn
three times weighs 3.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

QUALITY_TARGET = 0.95  # of all-last-tier quality, as RouteLLM's CPT(95 %)
TOLERANCE = 1e-12  # a sum of 0/1 over n need not equal 0.95 * the same sum exactly

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Curve:
    shares: Array  # share of (weighted) prompts on the last tier, ascending from 0 to 1
    qualities: Array  # quality at that share

    def share_reaching(self, target: float) -> float:
        """The smallest share whose quality reaches `target` (1.0 if none does: sending
        everything to the last tier is the most any threshold can do)."""
        reached = np.nonzero(self.qualities >= target - TOLERANCE)[0]
        return float(self.shares[reached[0]]) if reached.size else 1.0

    def quality_at(self, share: float) -> float:
        """Quality at the largest point whose share does not exceed `share`: what a
        threshold can buy within that budget of last-tier calls."""
        within = np.nonzero(self.shares <= share + TOLERANCE)[0]
        return float(self.qualities[within[-1]])


def _as_array(values: Sequence[float] | Array) -> Array:
    return np.asarray(values, dtype=float)


def score_curve(
    scores: Sequence[float] | Array,
    weak: Sequence[bool] | Array,
    strong: Sequence[bool] | Array,
    weights: Array | None = None,
    *,
    split_ties: bool = False,
) -> Curve:
    """The cost-quality curve of routing the highest scores to the last tier first.
    `split_ties`: a point after every prompt (the oracle, which needs no threshold)."""
    x, w, s = _as_array(scores), _as_array(weak), _as_array(strong)
    counts = np.ones_like(x) if weights is None else _as_array(weights)
    total = counts.sum()
    order = np.argsort(-x, kind="stable")
    gained = np.cumsum((counts * (s - w))[order])
    sent = np.cumsum(counts[order])
    if split_ties:
        ends = np.arange(x.size)
    else:  # the last position of each tie group (and the very last position)
        ranked = x[order]
        ends = np.nonzero(np.append(ranked[1:] < ranked[:-1], True))[0]
    base = float((counts * w).sum())
    shares = np.concatenate(([0.0], sent[ends] / total))
    qualities = np.concatenate(([base], base + gained[ends])) / total
    return Curve(shares, qualities)


def needs_strong(weak: Sequence[bool] | Array, strong: Sequence[bool] | Array) -> Array:
    """1.0 where only the last tier answered correctly: the prompts worth sending there."""
    return (_as_array(strong) > 0) & ~(_as_array(weak) > 0)  # type: ignore[return-value]


def oracle_curve(
    weak: Sequence[bool] | Array, strong: Sequence[bool] | Array, weights: Array | None = None
) -> Curve:
    return score_curve(
        needs_strong(weak, strong).astype(float), weak, strong, weights, split_ties=True
    )


@dataclass(frozen=True)
class Ends:
    all_weak: float  # quality with nothing on the last tier
    all_strong: float  # ... with everything there

    @property
    def target(self) -> float:
        return QUALITY_TARGET * self.all_strong

    def random_share_reaching(self, target: float) -> float:
        """Where random's expected line reaches `target`."""
        if self.all_weak >= target - TOLERANCE:
            return 0.0
        if self.all_strong <= self.all_weak:
            return 1.0
        return min(1.0, (target - self.all_weak) / (self.all_strong - self.all_weak))

    def random_quality_at(self, share: float) -> float:
        return self.all_weak + share * (self.all_strong - self.all_weak)


def ends(
    weak: Sequence[bool] | Array, strong: Sequence[bool] | Array, weights: Array | None = None
) -> Ends:
    w, s = _as_array(weak), _as_array(strong)
    counts = np.ones_like(w) if weights is None else _as_array(weights)
    total = counts.sum()
    return Ends(float((counts * w).sum() / total), float((counts * s).sum() / total))


@dataclass(frozen=True)
class Figures:
    """One router's two headline numbers on one set of prompts."""

    share_at_target: float  # frontier_share_at_95
    quality_at_share: float  # quality (as a fraction of all-strong) at the chosen share


def figures(
    scores: Array | None,
    weak: Array,
    strong: Array,
    *,
    share: float,
    weights: Array | None = None,
) -> dict[str, Figures]:
    """The router's, random's and the oracle's figures (router only when `scores`).
    Quality at a share is relative to all-strong quality, as the 95 % target is."""
    reference = ends(weak, strong, weights)
    strong_quality = reference.all_strong or 1.0
    target = reference.target
    result = {
        "random": Figures(
            reference.random_share_reaching(target),
            reference.random_quality_at(share) / strong_quality,
        ),
    }
    oracle = oracle_curve(weak, strong, weights)
    result["oracle"] = Figures(
        oracle.share_reaching(target), oracle.quality_at(share) / strong_quality
    )
    if scores is not None:
        curve = score_curve(scores, weak, strong, weights)
        result["router"] = Figures(
            curve.share_reaching(target), curve.quality_at(share) / strong_quality
        )
    return result


def percentile_interval(
    values: Sequence[float] | Array, level: float = 0.95
) -> tuple[float, float]:
    """The central `level` interval of bootstrap replicates (the percentile method)."""
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(_as_array(values), [tail, 100 - tail])
    return float(low), float(high)


def resample_weights(rng: np.random.Generator, size: int) -> Array:
    """How often each of `size` rows is drawn in one bootstrap resample of `size` rows."""
    return np.bincount(rng.integers(0, size, size), minlength=size).astype(float)
