"""Route jobs: the job's frozen routing settings, and the decision step for one prompt."""

from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from models import (
    TERMINAL_PROMPT_STATUSES,
    Attempt,
    AttemptPurpose,
    Job,
    JobStatus,
    Prompt,
    session_scope,
)
from workers.answer import attempt_from_completion, attempt_from_error
from workers.routers import Decision, Router, make_router
from workers.settings import Settings


def route_params(settings: Settings, *, router: str | None, **overrides: Any) -> dict[str, Any]:
    """Everything a route job needs, frozen at submit so a config edit mid-job changes nothing."""
    config = settings.router
    params: dict[str, Any] = {
        "router": router or config.strategy,
        "tiers": list(settings.tiers),
        "fallback": list(config.fallback),
        "threshold": config.confidence_threshold,
        "confidence_method": config.confidence_method,
        "unknown_confidence": config.unknown_confidence,
        "classifier": config.classifier,
        "logprobs": True,
        "temperature": 0.7,
        "max_tokens": None,
        "system_prompt": None,
    }
    params.update({key: value for key, value in overrides.items() if value is not None})
    return params


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


# Loading a classifier takes a moment: one router per job configuration per process.
_routers: dict[tuple[str, tuple[str, ...], str | None], Router] = {}


def router_for(params: dict[str, Any], settings: Settings) -> Router:
    key = (params["router"], tuple(params["tiers"]), params.get("classifier"))
    if key not in _routers:
        _routers[key] = make_router(key[0], settings=settings, tiers=key[1], classifier_path=key[2])
    return _routers[key]


def router_attempt(prompt_id: int, decision: Decision, settings: Settings) -> Attempt | None:
    """The LLM router's own model call, as an attempt with purpose `route` (cost included)."""
    if decision.call_tier is None:
        return None
    tier = settings.require_tier(decision.call_tier)
    if decision.call is not None:
        return attempt_from_completion(
            prompt_id, decision.call_tier, tier, decision.call, purpose=AttemptPurpose.ROUTE
        )
    if decision.error is not None:
        return attempt_from_error(
            prompt_id, decision.call_tier, tier, decision.error, purpose=AttemptPurpose.ROUTE
        )
    return None


def decide_tier(prompt_id: int, *, settings: Settings, engine: Engine) -> str | None:
    """The tier this prompt goes to, recorded on the prompt; None when nothing is left to do."""
    with Session(engine) as session:
        prompt = session.get(Prompt, prompt_id)
        if prompt is None or prompt.status in TERMINAL_PROMPT_STATUSES:
            return None
        job = session.get(Job, prompt.job_id)
        if job is None or job.status != JobStatus.RUNNING:
            return None
        if prompt.routed_tier:  # a redelivered message: the decision is already made
            return prompt.routed_tier
        params, text = dict(job.params), last_user_text(prompt.messages)
    decision = router_for(params, settings).decide(text)
    with session_scope(engine) as session:
        attempt = router_attempt(prompt_id, decision, settings)
        if attempt is not None:
            session.add(attempt)
        session.execute(
            update(Prompt)
            .where(col(Prompt.id) == prompt_id)
            .values(
                routed_tier=decision.tier,
                router_score=decision.score,
                router_latency_ms=decision.latency_ms,
            )
        )
    return decision.tier
