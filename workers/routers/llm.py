"""Ask a (cheap) model how hard the request is: one call, a one-word answer.

The call is made through an injected `call(tier_name, request)`, so the route flow can
record it (its cost and latency are part of what routing costs) and tests can point it
anywhere. A failed call or an answer that is not EASY / MEDIUM / HARD routes to the middle
tier: a guess that neither wastes the frontier on everything nor bets on the weakest model.
"""

import re
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from workers.completion import CallError, Completion
from workers.routers.base import LEVELS, Decision, Level, elapsed_ms, level_score, tier_for_level

ModelCall = Callable[[str, dict[str, Any]], Completion]

FALLBACK_LEVEL: Level = "medium"
MAX_ANSWER_TOKENS = 5  # one word, with room for a stray token or two of punctuation
_FIRST_WORD = re.compile(r"[^\W\d_]+")  # letters only: "**Hard.**" → "Hard"


def parse_level(answer: str) -> Level | None:
    """The level named by the answer's first word, any case; None if it names none."""
    found = _FIRST_WORD.search(answer)
    word = found.group().lower() if found else ""
    return cast(Level, word) if word in LEVELS else None


class LlmRouter:
    name = "llm"

    def __init__(
        self, *, tiers: Sequence[str], call_tier: str, prompt_template: str, call: ModelCall
    ) -> None:
        self.tiers = tuple(tiers)
        self.call_tier = call_tier
        self.prompt_template = prompt_template
        self.call = call

    def request(self, text: str) -> dict[str, Any]:
        content = self.prompt_template.format(prompt=text)
        return {
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": MAX_ANSWER_TOKENS,
        }

    def decide(self, text: str) -> Decision:
        started = time.perf_counter()
        try:
            completion = self.call(self.call_tier, self.request(text))
        except CallError as error:
            return self._fallback(started, error=error)
        level = parse_level(completion.text)
        if level is None:
            return self._fallback(started, call=completion)
        return Decision(
            tier=tier_for_level(self.tiers, level),
            score=level_score(level),
            latency_ms=elapsed_ms(started),
            call=completion,
            call_tier=self.call_tier,
        )

    def _fallback(
        self, started: float, *, call: Completion | None = None, error: CallError | None = None
    ) -> Decision:
        """No usable answer: the middle tier, and no score (the router did not judge)."""
        return Decision(
            tier=tier_for_level(self.tiers, FALLBACK_LEVEL),
            score=None,
            latency_ms=elapsed_ms(started),
            call=call,
            error=error,
            call_tier=self.call_tier,
        )
