"""The evaluation arithmetic against cases worked out by hand: the cost-quality curve (with
ties and with bootstrap weights), frontier share at 95 %, quality at a share, the random
line and the oracle, and the bootstrap's percentile interval."""

import numpy as np
import pytest

from producer.route_stats import (
    Curve,
    ends,
    figures,
    oracle_curve,
    percentile_interval,
    resample_weights,
    score_curve,
)

# Four prompts. weak right on 0 and 3, strong right on 0, 1 and 3: only prompt 1 needs the
# strong model. All-weak quality 2/4 = 0.5, all-strong 3/4 = 0.75, target 0.95 * 0.75 = 0.7125.
WEAK = [1, 0, 0, 1]
STRONG = [1, 1, 0, 1]
SCORES = [0.1, 0.9, 0.5, 0.3]  # ranks: 1, 2, 3, 0


def points(curve: Curve) -> list[tuple[float, float]]:
    pairs = zip(curve.shares, curve.qualities, strict=True)
    return [(round(float(s), 9), round(float(q), 9)) for s, q in pairs]


def test_curve_sends_the_highest_scores_first() -> None:
    curve = score_curve(SCORES, WEAK, STRONG)
    # prompt 1 first (+1 correct), then 2 (0 → 0), 3 (1 → 1), 0 (1 → 1): only the first helps
    assert points(curve) == [(0.0, 0.5), (0.25, 0.75), (0.5, 0.75), (0.75, 0.75), (1.0, 0.75)]
    assert curve.share_reaching(0.7125) == 0.25
    assert curve.quality_at(0.2) == 0.5  # 0.2 of the calls buys no point past 0
    assert curve.quality_at(0.25) == 0.75
    assert curve.quality_at(1.0) == 0.75


def test_tied_scores_move_together() -> None:
    curve = score_curve([0.5, 0.5, 0.5, 0.1], WEAK, STRONG)
    # prompts 0, 1, 2 cannot be split by a threshold: one step from 0 to 3/4 of the prompts
    assert points(curve) == [(0.0, 0.5), (0.75, 0.75), (1.0, 0.75)]
    assert curve.share_reaching(0.7125) == 0.75
    assert curve.quality_at(0.5) == 0.5


def test_a_curve_that_never_reaches_the_target_needs_everything() -> None:
    curve = score_curve([0.9, 0.1], [1, 0], [0, 0])  # the strong model is worse
    assert curve.share_reaching(0.99) == 1.0


def test_random_is_the_straight_line_between_the_ends() -> None:
    reference = ends(WEAK, STRONG)
    assert (reference.all_weak, reference.all_strong) == (0.5, 0.75)
    assert reference.target == pytest.approx(0.7125)
    assert reference.random_share_reaching(reference.target) == pytest.approx(0.85)
    assert reference.random_quality_at(0.2) == pytest.approx(0.55)
    assert ends([1, 1], [1, 0]).random_share_reaching(0.5) == 0.0  # weak already enough


def test_the_oracle_sends_exactly_the_prompts_that_need_the_strong_model() -> None:
    curve = oracle_curve(WEAK, STRONG)
    assert curve.share_reaching(0.7125) == 0.25
    # eight prompts, three need strong; weak 4/8, strong 7/8, target 0.83125: 3 needed, but
    # the third only lifts quality to 7/8, the second to 6/8 = 0.75 < target
    weak = [1, 1, 1, 1, 0, 0, 0, 0]
    strong = [1, 1, 1, 1, 1, 1, 1, 0]
    assert oracle_curve(weak, strong).share_reaching(0.95 * 7 / 8) == 3 / 8


def test_weights_count_a_row_as_often_as_it_was_drawn() -> None:
    weights = np.asarray([0.0, 2.0, 1.0, 1.0])  # prompt 0 not drawn, prompt 1 twice
    curve = score_curve(SCORES, WEAK, STRONG, weights)
    # weak right: only prompt 3 (weight 1) → 1/4; strong right: 1 (x2) and 3 → 3/4
    assert points(curve) == [(0.0, 0.25), (0.5, 0.75), (0.75, 0.75), (1.0, 0.75), (1.0, 0.75)]
    reference = ends(WEAK, STRONG, weights)
    assert (reference.all_weak, reference.all_strong) == (0.25, 0.75)
    assert curve.share_reaching(reference.target) == 0.5
    assert reference.random_share_reaching(reference.target) == pytest.approx(0.925)


def test_figures_put_random_and_the_oracle_beside_the_router() -> None:
    found = figures(np.asarray(SCORES), np.asarray(WEAK), np.asarray(STRONG), share=0.25)
    assert found["router"].share_at_target == 0.25
    assert found["router"].quality_at_share == 1.0  # 0.75 of all-strong's 0.75
    assert found["random"].share_at_target == pytest.approx(0.85)
    assert found["random"].quality_at_share == pytest.approx((0.5 + 0.25 * 0.25) / 0.75)
    assert found["oracle"].share_at_target == 0.25
    assert "router" not in figures(None, np.asarray(WEAK), np.asarray(STRONG), share=0.2)


def test_percentile_interval_and_resample_weights() -> None:
    assert percentile_interval(list(range(101))) == pytest.approx((2.5, 97.5))
    assert percentile_interval([3.0] * 10) == (3.0, 3.0)
    weights = resample_weights(np.random.default_rng(0), 50)
    assert weights.sum() == 50 and weights.shape == (50,) and (weights >= 0).all()
    assert (weights == 0).any()  # with replacement: some rows are left out
