"""workers.confidence: the mean token probability, the seed's formula, and the configured
unknown when an answer has no logprobs."""

import math

import pytest

from workers.confidence import confidence, geometric_mean, seed_formula


def test_geometric_mean_is_the_mean_token_probability() -> None:
    logprobs = [math.log(0.9), math.log(0.5), math.log(0.8)]
    assert geometric_mean(logprobs) == pytest.approx((0.9 * 0.5 * 0.8) ** (1 / 3))
    assert seed_formula([-0.1, -0.3]) == pytest.approx(0.8)
    assert seed_formula([-5.0]) == 0.0


def test_missing_logprobs_give_the_configured_unknown() -> None:
    assert confidence(None, method="geometric_mean", unknown=0.5) == 0.5
    assert confidence([], method="seed", unknown=0.3) == 0.3
