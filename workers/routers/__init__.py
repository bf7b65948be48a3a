"""Routers: each decides which tier, cheapest first, should answer a prompt.

    rules       keyword and length heuristics (the seed's), no model
    classifier  a TF-IDF + logistic-regression model trained on labelled prompts
    llm         asks a cheap tier "EASY, MEDIUM, or HARD?"
    random      a seeded score that ignores the prompt: the baseline to beat

`make_router` builds one from the settings; `validate_router` does everything that can be
checked before a job is enqueued, so a bad router fails the submit, not the workers.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from workers.routers.base import (
    Decision,
    LocalRouter,
    Router,
    RouterError,
    ScoringRouter,
    check_thresholds,
    decide_all,
    even_thresholds,
    has_scores,
    tier_for_level,
    tier_for_score,
)
from workers.routers.llm import LlmRouter
from workers.routers.random_router import RandomRouter
from workers.routers.rules import RulesRouter
from workers.settings import RouterConfig, Settings

if TYPE_CHECKING:  # the caller imports the HTTP stack; routers only need its type here
    from workers.caller import Caller

__all__ = [
    "ROUTER_NAMES",
    "Decision",
    "LocalRouter",
    "Router",
    "RouterError",
    "ScoringRouter",
    "decide_all",
    "has_scores",
    "make_router",
    "router_thresholds",
    "tier_for_level",
    "tier_for_score",
    "validate_router",
]

ROUTER_NAMES = ("rules", "classifier", "llm", "random")


def make_router(
    name: str,
    *,
    settings: Settings,
    tiers: Sequence[str] | None = None,
    classifier_path: str | Path | None = None,
    caller: "Caller | None" = None,
    seed: int = 0,
) -> Router:
    """The router called `name` over `tiers` (default: every configured tier, in order).
    The llm router makes its calls through `caller` (needed only to decide)."""
    tiers = _checked_tiers(settings, tiers)
    if name == "rules":
        return RulesRouter(settings.router, tiers)
    if name == "classifier":
        return _classifier_router(settings, tiers, classifier_path)
    if name == "llm":
        return _llm_router(settings, tiers, caller)
    if name == "random":
        return RandomRouter(tiers, router_thresholds(settings.router, tiers), seed)
    raise RouterError(f"unknown router {name!r}; choose one of: {', '.join(ROUTER_NAMES)}")


def validate_router(
    name: str, *, settings: Settings, classifier_path: str | Path | None = None
) -> None:
    """Raise RouterError now for what would otherwise fail in a worker: an unknown name, a
    missing or unreadable classifier file, thresholds that do not fit the tiers."""
    make_router(name, settings=settings, classifier_path=classifier_path)


def router_thresholds(config: RouterConfig, tiers: Sequence[str]) -> tuple[float, ...]:
    """The configured thresholds when they fit the tiers. Left at their default (written for
    three tiers), they are spread evenly over however many tiers there are; set explicitly
    for another number of tiers, they are an error the user must fix."""
    thresholds = tuple(config.thresholds)
    if len(thresholds) != len(tiers) - 1 and "thresholds" not in config.model_fields_set:
        thresholds = even_thresholds(len(tiers))
    check_thresholds(thresholds, tiers)
    return thresholds


def _checked_tiers(settings: Settings, tiers: Sequence[str] | None) -> tuple[str, ...]:
    chosen = tuple(settings.tiers) if tiers is None else tuple(tiers)
    if not chosen:
        raise RouterError("a router needs at least one tier; none were given")
    unknown = [tier for tier in chosen if tier not in settings.tiers]
    if unknown:
        raise RouterError(
            f"unknown tier(s) {', '.join(unknown)} for the router; "
            f"configured tiers: {', '.join(settings.tiers)}"
        )
    return chosen


def _classifier_router(
    settings: Settings, tiers: Sequence[str], classifier_path: str | Path | None
) -> Router:
    # imported here: numpy and joblib cost time that the other routers never need
    from workers.routers.calibration import classifier_thresholds
    from workers.routers.classifier import ClassifierRouter, load_classifier

    path = classifier_path or settings.router.classifier
    model = load_classifier(path)
    thresholds = classifier_thresholds(path, settings.router, tiers)
    return ClassifierRouter(
        model, tiers, thresholds, defer=settings.router.defer_out_of_distribution
    )


def _llm_router(settings: Settings, tiers: Sequence[str], caller: "Caller | None") -> Router:
    tier = settings.router.llm_router_tier or tiers[0]  # default: the cheapest tier asks
    if tier not in settings.tiers:
        raise RouterError(f"llm_router_tier {tier!r} is not a configured tier")
    return LlmRouter(
        tiers=tiers,
        tier=settings.tiers[tier],
        prompt_template=settings.router.llm_router_prompt,
        caller=caller,
    )
