"""The baseline: a score that knows nothing about difficulty, cut by the same thresholds.

The score is a seeded hash of the text rather than a draw from one RNG stream: every worker
process builds its own router, and a stream would give each the same sequence and make a
prompt's tier depend on which message a worker happened to take first. A hash gives each
prompt the same tier on every run, redelivery or resume, and is still uniform over prompts.
"""

import hashlib
import time
from collections.abc import Sequence

from workers.routers.base import Decision, Local, elapsed_ms, tier_for_score


def uniform_score(text: str, seed: int) -> float:
    """In [0, 1), uniform over texts, fixed for a (text, seed) pair."""
    payload = f"{seed}\0{text}".encode()
    digest = hashlib.blake2b(payload, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class RandomRouter(Local):
    name = "random"

    def __init__(self, tiers: Sequence[str], thresholds: Sequence[float], seed: int = 0) -> None:
        self.tiers = tuple(tiers)
        self.thresholds = tuple(thresholds)
        self.seed = seed
        tier_for_score(self.tiers, 0.0, self.thresholds)  # bad thresholds fail here, not later

    def decide_now(self, text: str) -> Decision:
        started = time.perf_counter()
        score = uniform_score(text, self.seed)
        tier = tier_for_score(self.tiers, score, self.thresholds)
        return Decision(tier=tier, score=score, latency_ms=elapsed_ms(started))

    def score(self, texts: Sequence[str]) -> list[float]:
        return [uniform_score(text, self.seed) for text in texts]
