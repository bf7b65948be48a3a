"""Per-token logprobs whose geometric mean says how sure the model is.

An able model on an easy prompt is sure; a weak model on a prompt beyond its skill is not:

    confidence = clamp(0.97 - max(0, difficulty - skill) * 2.0, 0.05, 0.99)

Each token's negative logprob is an exponential draw, then all draws are scaled so that
exp(mean(logprob)) equals `confidence` exactly: per-token noise, a predictable average.
Draws are seeded by the answer's stable key, so the same request gets the same logprobs.

Top alternatives are other words, each less likely than the chosen token and together
never more likely than what the chosen token leaves over (probabilities sum to <= 1).
"""

import functools
import math
import random
from collections.abc import Sequence
from typing import Any

from simulator.vocabulary import WORDS

_LOGPROB_SALT = 0x5EED  # keeps the logprob stream apart from the text stream of the same key
_SMALLEST_LEFTOVER = 1e-9  # a token with logprob 0 leaves nothing over; log(0) is undefined
_SMALLEST_CAP = 1e-300  # a vanishingly unlikely chosen token must not underflow log() either
_VOCAB_SIZE = len(WORDS)
_STRIDE = 7
assert math.gcd(_STRIDE, _VOCAB_SIZE) == 1, "the stride must visit every word"
_WORDS_BY_STRIDE = tuple(WORDS[(i * _STRIDE) % _VOCAB_SIZE] for i in range(_VOCAB_SIZE))


# How fast confidence falls as a prompt's difficulty exceeds the model's skill: a model
# 0.1 below what a prompt needs lands near the default 0.8 threshold.
GAP_PENALTY = 2.0


def target_confidence(difficulty: float, skill: float) -> float:
    return min(0.99, max(0.05, 0.97 - max(0.0, difficulty - skill) * GAP_PENALTY))


def logprobs_content(
    tokens: Sequence[str], key: int, confidence: float, top_n: int
) -> list[dict[str, Any]]:
    """The `choices[0].logprobs.content` list of an OpenAI chat completion."""
    if not tokens:
        return []
    rng = random.Random(key ^ _LOGPROB_SALT)
    chosen = _chosen_logprobs(rng, len(tokens), confidence)
    return [
        _chosen_record(rng, token, logprob, top_n)
        for token, logprob in zip(tokens, chosen, strict=True)
    ]


def _chosen_logprobs(rng: random.Random, count: int, confidence: float) -> list[float]:
    mean_surprise = -math.log(confidence)
    draws = [rng.expovariate(1.0) for _ in range(count)]
    draw_mean = sum(draws) / count
    if draw_mean == 0:  # practically impossible, but a division by zero would be worse
        return [-mean_surprise] * count
    scale = mean_surprise / draw_mean
    return [-draw * scale for draw in draws]


def _chosen_record(rng: random.Random, token: str, logprob: float, top_n: int) -> dict[str, Any]:
    record = _token_record(token, logprob)
    record["top_logprobs"] = _alternatives(rng, token, logprob, top_n)
    return record


def _alternatives(
    rng: random.Random, token: str, logprob: float, top_n: int
) -> list[dict[str, Any]]:
    """Halving probabilities from a cap below both the chosen token's probability and
    half the leftover mass: strictly decreasing, and summing to less than the leftover."""
    if top_n <= 0:
        return []
    chosen_p = math.exp(logprob)
    leftover = max(_SMALLEST_LEFTOVER, 1.0 - chosen_p)
    cap = max(_SMALLEST_CAP, min(chosen_p * 0.9, leftover * 0.5))
    words = _alternative_words(rng, token, top_n)
    return [
        _token_record(word, math.log(cap * 0.5**rank * rng.uniform(0.6, 1.0)))
        for rank, word in enumerate(words)
    ]


def _alternative_words(rng: random.Random, token: str, count: int) -> list[str]:
    """`count` distinct vocabulary words other than the token's own, walked from a random
    start with a stride coprime to the vocabulary size: as good as random.sample here, at
    a fraction of its cost (this runs for every token of every logprobs answer)."""
    stripped = token.lstrip()
    prefix = token[: len(token) - len(stripped)]  # keep the BPE-style leading space
    own = stripped.lower()
    start = int(rng.random() * _VOCAB_SIZE)
    picked = (_WORDS_BY_STRIDE[(start + i) % _VOCAB_SIZE] for i in range(count + 1))
    words = [word for word in picked if word != own][:count]
    if stripped[:1].isupper():
        words = [word.capitalize() for word in words]
    return [prefix + word for word in words]


def _token_record(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": _utf8(token)}


@functools.lru_cache(maxsize=16_384)
def _utf8(token: str) -> list[int]:
    """Cached: answers reuse a few hundred words. Callers only serialise it, never mutate."""
    return list(token.encode("utf-8"))
