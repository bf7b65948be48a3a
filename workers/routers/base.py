"""What every router shares: the decision it returns, its interface, and the two ways of
turning a difficulty into a tier (a level, or a score cut by thresholds).

Tiers are always given cheapest first (the config's order), so "harder" means "further
along the list", whatever the tiers are called and however many there are.
"""

import asyncio
import bisect
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeGuard

from workers.chat import CallError, Completion
from workers.errors import BadConfig

Level = Literal["easy", "medium", "hard"]
LEVELS: tuple[Level, ...] = ("easy", "medium", "hard")
LEVEL_SCORES: dict[Level, float] = {"easy": 0.0, "medium": 0.5, "hard": 1.0}


class RouterError(BadConfig):
    """A router problem a user can fix (unknown router, classifier file, thresholds); the
    message says what and how."""


@dataclass(frozen=True, slots=True)
class Decision:
    tier: str  # one of the configured tier names
    score: float | None  # the router's difficulty score in [0, 1]; None if it has none
    latency_ms: float  # the router's own decision time
    call: Completion | None = None  # the llm router's own model call, when it succeeded
    failures: tuple[CallError, ...] = ()  # ... and its tries that failed, in order
    asked_tier: str | None = None  # the tier that call went to
    deferred: bool = False  # out of the router's depth: sent to the cascade's first tier

    @property
    def error(self) -> CallError | None:
        """How the router's call failed in the end (None: it made none, or it answered)."""
        return self.failures[-1] if self.failures and self.call is None else None


class Router(Protocol):
    name: str

    async def decide(self, text: str) -> Decision: ...


class LocalRouter(Router, Protocol):
    """A router that decides in this process, without I/O (rules, random, classifier)."""

    def decide_now(self, text: str) -> Decision: ...


class ScoringRouter(LocalRouter, Protocol):
    """A router with a continuous score and a batch entry point (classifier, random)."""

    tiers: tuple[str, ...]
    thresholds: tuple[float, ...]

    def score(self, texts: Sequence[str]) -> list[float]: ...


class Local:
    """`decide` for a router that decides in microseconds: no thread hop, no await."""

    def decide_now(self, text: str) -> Decision:
        raise NotImplementedError

    async def decide(self, text: str) -> Decision:
        return self.decide_now(text)


def has_scores(router: Router) -> TypeGuard[ScoringRouter]:
    return hasattr(router, "score") and hasattr(router, "thresholds")


async def decide_all(router: Router, texts: Sequence[str], *, concurrency: int) -> list[Decision]:
    """Every text's decision, in order. A scoring router scores them in one vectorised pass
    in a thread (CPU work, off the event loop), each decision carrying the batch's time per
    prompt as its latency; others decide concurrently, at most `concurrency` at once."""
    if has_scores(router):
        return await asyncio.to_thread(batch_decisions, router, texts)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(text: str) -> Decision:
        async with gate:
            return await router.decide(text)

    return list(await asyncio.gather(*(one(text) for text in texts)))


def batch_decisions(router: ScoringRouter, texts: Sequence[str]) -> list[Decision]:
    own = getattr(router, "decisions", None)
    if own is not None:  # the classifier: its own batch path, which can defer
        decided: list[Decision] = own(texts)
        return decided
    started = time.perf_counter()
    scores = router.score(texts)
    per_prompt = elapsed_ms(started) / max(1, len(texts))
    return [
        Decision(tier_for_score(router.tiers, s, router.thresholds), s, per_prompt) for s in scores
    ]


def tier_for_level(tiers: Sequence[str], level: Level) -> str:
    """easy → the cheapest tier, hard → the most capable, medium → the middle one (the last
    of two, so a two-tier setup sends "medium" to the better model)."""
    _require_tiers(tiers)
    if level == "easy":
        return tiers[0]
    if level == "hard":
        return tiers[-1]
    if level == "medium":
        return tiers[len(tiers) // 2]
    raise RouterError(f"unknown difficulty level {level!r}; expected one of {', '.join(LEVELS)}")


def tier_for_score(tiers: Sequence[str], score: float, thresholds: Sequence[float]) -> str:
    """score < thresholds[0] → tiers[0]; thresholds[i-1] <= score < thresholds[i] → tiers[i];
    score >= thresholds[-1] → tiers[-1]."""
    check_thresholds(thresholds, tiers)
    if not math.isfinite(score):
        raise RouterError(f"router score must be a number in [0, 1], got {score!r}")
    return tiers[bisect.bisect_right(thresholds, score)]


def check_thresholds(thresholds: Sequence[float], tiers: Sequence[str]) -> None:
    """One cut point between each pair of neighbouring tiers, each in [0, 1], ascending."""
    _require_tiers(tiers)
    shown = list(thresholds)
    if len(thresholds) != len(tiers) - 1:
        raise RouterError(
            f"router thresholds {shown} split scores into {len(thresholds) + 1} tiers, but "
            f"{len(tiers)} are configured ({', '.join(tiers)}); "
            f"set [router] thresholds to {len(tiers) - 1} ascending values in [0, 1]"
        )
    if any(not (0.0 <= value <= 1.0) for value in thresholds):  # also catches NaN
        raise RouterError(f"router thresholds must each be in [0, 1], got {shown}")
    if any(low >= high for low, high in itertools.pairwise(thresholds)):
        raise RouterError(f"router thresholds must be strictly ascending, got {shown}")


def even_thresholds(tier_count: int) -> tuple[float, ...]:
    """Equal score bands, for a tier count the configured thresholds were not written for."""
    return tuple(i / tier_count for i in range(1, tier_count))


def level_score(level: Level) -> float:
    return LEVEL_SCORES[level]


def elapsed_ms(started: float) -> float:
    """Milliseconds since a `time.perf_counter()` reading."""
    return (time.perf_counter() - started) * 1000.0


def _require_tiers(tiers: Sequence[str]) -> None:
    if not tiers:
        raise RouterError("a router needs at least one tier; none were given")
