"""Prices come from the tier's config; token counts from the usage the provider returned."""

from workers.settings import TierConfig


def cost_usd(tier: TierConfig, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * tier.input_per_1k + completion_tokens * tier.output_per_1k) / 1000.0
