"""The seed's heuristics: keywords and length, no model. Microseconds per decision.

In order: a code keyword → hard; an analysis keyword → medium; a short question → easy;
a long prompt → medium; anything else → easy.
"""

import re
import time
from collections.abc import Iterable, Sequence

from workers.routers.base import Decision, Level, Local, elapsed_ms, level_score, tier_for_level
from workers.settings import RouterConfig


def keyword_pattern(keywords: Iterable[str]) -> re.Pattern[str]:
    """Whole words (or phrases), any case; a plural ending still counts, so "bugs" and
    "classes" match "bug" and "class" while "program" does not match "programme"."""
    words = sorted({k.strip().lower() for k in keywords if k.strip()}, key=len, reverse=True)
    if not words:
        return re.compile(r"(?!)")  # matches nothing: an empty list disables the rule
    # any run of whitespace inside a phrase: "explain  why" and "pros and\ncons" still count
    alternatives = "|".join(r"\s+".join(map(re.escape, word.split())) for word in words)
    return re.compile(rf"\b(?:{alternatives})(?:s|es)?\b", re.IGNORECASE)


class RulesRouter(Local):
    name = "rules"

    def __init__(self, config: RouterConfig, tiers: Sequence[str]) -> None:
        self.tiers = tuple(tiers)
        self.code = keyword_pattern(config.code_keywords)
        self.analysis = keyword_pattern(config.analysis_keywords)
        self.short_question_words = config.short_question_words
        self.medium_words = config.medium_words

    def decide_now(self, text: str) -> Decision:
        started = time.perf_counter()
        level = self.level(text)
        tier = tier_for_level(self.tiers, level)
        return Decision(tier=tier, score=level_score(level), latency_ms=elapsed_ms(started))

    def level(self, text: str) -> Level:
        if self.code.search(text):
            return "hard"
        if self.analysis.search(text):
            return "medium"
        words = len(text.split())
        if self._is_short_question(text, words):
            return "easy"
        if words > self.medium_words:
            return "medium"
        return "easy"

    def _is_short_question(self, text: str, words: int) -> bool:
        # a question mark buys a little more room: "what ... ?" is still a lookup
        if words <= self.short_question_words:
            return True
        return text.rstrip().endswith("?") and words <= 2 * self.short_question_words
