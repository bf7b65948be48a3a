"""How hard a prompt looks, in [0, 1], as a deterministic function of its text.

It drives both the confidence a simulated model shows (its logprobs) and the one-word
answer to a router's "EASY, MEDIUM, or HARD" question, so a demo's router and its
confidence-based fallback agree with each other about which prompts are hard.

    start at 0.30
    + up to 0.30 for length (full at 300 words)
    + 0.12 per distinct hard keyword (prove, derive, implement, code, algorithm, ...), <= 0.48
    - 0.20 per distinct simple-question pattern ("what is", "who", "capital of", ...), <= 0.40
    + a hash-based nudge in [-0.05, +0.05], so similar prompts do not all tie
    clamped to [0, 1]

The markers `[hard]` (1.0) and `[easy]` (0.0) override all of that, for tests that must
know the outcome.
"""

import hashlib
import re

HARD_MARKER = "[hard]"
EASY_MARKER = "[easy]"

BASE = 0.30
LENGTH_WEIGHT = 0.30
LENGTH_SATURATION_WORDS = 300
HARD_KEYWORD_WEIGHT = 0.12
HARD_KEYWORD_CAP = 0.48
SIMPLE_PATTERN_WEIGHT = 0.20
SIMPLE_PATTERN_CAP = 0.40
NUDGE = 0.05

# word-stem patterns; \b on the left only, so "proves", "coding" and "optimisation" count
_HARD_KEYWORDS = tuple(
    re.compile(pattern)
    for pattern in (
        r"\bprov(e|ing)|\bproof",
        r"\bderiv",
        r"\bimplement",
        r"\bcod(e|ing)\b",
        r"\balgorithm",
        r"\banaly[sz]",
        r"\bcompar",
        r"\bexplain why\b",
        r"\boptimi[sz]",
        r"\bcomplexity\b",
        r"\btheorem",
        r"\bdebug",
        r"\brefactor",
        r"\btrade-?offs?\b",
    )
)
_SIMPLE_PATTERNS = tuple(
    re.compile(pattern)
    for pattern in (
        r"\bwhat is\b|\bwhat's\b",
        r"\bwho\b",
        r"\bcapital of\b",
        r"\bwhen (did|was|is)\b",
        r"\bhow many\b",
        r"\bdefine\b",
    )
)


def difficulty(text: str) -> float:
    lowered = text.lower()
    if HARD_MARKER in lowered:
        return 1.0
    if EASY_MARKER in lowered:
        return 0.0
    score = BASE + _length_part(lowered) + _hard_part(lowered) - _simple_part(lowered)
    return min(1.0, max(0.0, score + _nudge(text)))


def _length_part(text: str) -> float:
    words = len(text.split())
    return LENGTH_WEIGHT * min(1.0, words / LENGTH_SATURATION_WORDS)


def _hard_part(text: str) -> float:
    hits = sum(1 for pattern in _HARD_KEYWORDS if pattern.search(text))
    return min(HARD_KEYWORD_CAP, hits * HARD_KEYWORD_WEIGHT)


def _simple_part(text: str) -> float:
    hits = sum(1 for pattern in _SIMPLE_PATTERNS if pattern.search(text))
    return min(SIMPLE_PATTERN_CAP, hits * SIMPLE_PATTERN_WEIGHT)


def _nudge(text: str) -> float:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    unit = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    return (unit * 2 - 1) * NUDGE


def difficulty_label(score: float) -> str:
    """The router's three buckets."""
    if score < 0.35:
        return "EASY"
    if score < 0.7:
        return "MEDIUM"
    return "HARD"
