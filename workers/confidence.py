"""Confidence of an answer from its token logprobs (DESIGN.md → Confidence)."""

import math
from collections.abc import Callable, Sequence


def geometric_mean(logprobs: Sequence[float]) -> float:
    """exp(mean(logprob)): the geometric-mean token probability, in [0, 1]."""
    return math.exp(sum(logprobs) / len(logprobs))


def seed_formula(logprobs: Sequence[float]) -> float:
    """The seed project's clamp(1 + mean(logprob)); kept so old thresholds still mean the same."""
    return min(1.0, max(0.0, 1.0 + sum(logprobs) / len(logprobs)))


METHODS: dict[str, Callable[[Sequence[float]], float]] = {
    "geometric_mean": geometric_mean,
    "seed": seed_formula,
}


def confidence(logprobs: Sequence[float] | None, *, method: str, unknown: float) -> float:
    """`unknown` when the provider sent no logprobs: we never invent them."""
    if not logprobs:
        return unknown
    return METHODS[method](logprobs)
