"""workers.cost: a call's price from its tier's prices per 1K input and output tokens."""

import pytest

from workers.cost import cost_usd
from workers.settings import TierConfig


def test_cost_uses_tier_prices() -> None:
    tier = TierConfig(base_url="http://x/v1", model="m", input_per_1k=0.5, output_per_1k=1.5)  # type: ignore[arg-type]
    assert cost_usd(tier, 1000, 2000) == pytest.approx(3.5)
