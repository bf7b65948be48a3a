"""Ask a (cheap) model how hard the request is: one call, a one-word answer.

The call goes through the one call path (`workers.caller`: the tier's global rate limit,
the aiohttp client, its retries), so the route step can record it (its cost and latency are
part of what routing costs) and tests can point the tier anywhere. A call that fails after
its retries, or an answer that is not EASY / MEDIUM / HARD, routes to the middle tier: a
guess that neither wastes the frontier on everything nor bets on the weakest model.
"""

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from workers.chat import CallError, ChatRequest, Completion
from workers.routers.base import (
    LEVELS,
    Decision,
    Level,
    RouterError,
    elapsed_ms,
    level_score,
    tier_for_level,
)
from workers.settings import TierConfig

if TYPE_CHECKING:  # the caller imports the HTTP stack; a router only needs its type here
    from workers.caller import Caller

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
        self,
        *,
        tiers: Sequence[str],
        tier: TierConfig,  # the (cheap) tier it asks
        prompt_template: str,
        caller: "Caller | None",
    ) -> None:
        self.tiers = tuple(tiers)
        self.tier = tier
        self.asked_tier = tier.name
        self.prompt_template = prompt_template
        self.caller = caller

    def request(self, text: str) -> ChatRequest:
        content = self.prompt_template.format(prompt=text)
        return ChatRequest(
            [{"role": "user", "content": content}], temperature=0, max_tokens=MAX_ANSWER_TOKENS
        )

    async def decide(self, text: str) -> Decision:
        if self.caller is None:
            raise RouterError("the llm router was built without a caller to make its calls")
        started = time.perf_counter()
        failures: list[CallError] = []
        try:
            completion = await self.caller.call(
                self.tier, self.request(text), on_failure=failures.append
            )
        except CallError:
            return self._fallback(started, failures=tuple(failures))
        level = parse_level(completion.text)
        if level is None:
            return self._fallback(started, call=completion, failures=tuple(failures))
        return Decision(
            tier=tier_for_level(self.tiers, level),
            score=level_score(level),
            latency_ms=elapsed_ms(started),
            call=completion,
            failures=tuple(failures),
            asked_tier=self.asked_tier,
        )

    def _fallback(
        self, started: float, *, failures: tuple[CallError, ...], call: Completion | None = None
    ) -> Decision:
        """No usable answer: the middle tier, and no score (the router did not judge)."""
        return Decision(
            tier=tier_for_level(self.tiers, FALLBACK_LEVEL),
            score=None,
            latency_ms=elapsed_ms(started),
            call=call,
            failures=failures,
            asked_tier=self.asked_tier,
        )
