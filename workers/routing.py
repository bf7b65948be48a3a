"""Route jobs: the job's frozen routing settings, and the decision step for a message's prompts."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Engine

from models import AttemptPurpose, get_write_engine
from models.tables import ATTEMPTS, PROMPTS
from models.queries import open_prompts
from workers.attempts import attempt_from_completion, attempt_from_error
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


def router_attempt(prompt_id: int, decision: Decision, settings: Settings) -> dict[str, Any] | None:
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


@dataclass(frozen=True, slots=True)
class ToRoute:
    prompt_id: int
    params: dict[str, Any]
    text: str


def decide_tiers(
    prompt_ids: list[int],
    *,
    settings: Settings,
    engine: Engine,
    decide_all: Callable[[Callable[[ToRoute], Decision], list[ToRoute]], list[Decision]],
) -> dict[int, str]:
    """The tier each prompt of a message goes to, recorded on the prompts in one
    transaction. Prompts with nothing left to do are left out; a prompt already routed (a
    redelivered message) keeps its decision. `decide_all` runs the routers (in a pool: the
    LLM router makes a call per prompt)."""
    decided: dict[int, str] = {}
    todo: list[ToRoute] = []
    with engine.connect() as conn:
        rows = open_prompts(conn, prompt_ids, PROMPTS.c.messages, PROMPTS.c.routed_tier)
    for row, params in rows:
        if row.routed_tier:
            decided[row.id] = row.routed_tier
        else:
            todo.append(ToRoute(row.id, params, last_user_text(row.messages)))
    decisions = decide_all(lambda item: router_for(item.params, settings).decide(item.text), todo)
    _record_decisions(settings, list(zip(todo, decisions, strict=True)))
    decided.update({item.prompt_id: d.tier for item, d in zip(todo, decisions, strict=True)})
    return {pid: decided[pid] for pid in prompt_ids if pid in decided}


def _record_decisions(settings: Settings, decisions: list[tuple[ToRoute, Decision]]) -> None:
    if not decisions:
        return
    attempts = [router_attempt(item.prompt_id, d, settings) for item, d in decisions]
    with get_write_engine(settings.database_url).begin() as conn:
        if any(attempts):
            conn.execute(insert(ATTEMPTS), [a for a in attempts if a])
        conn.execute(
            update(PROMPTS)
            .where(PROMPTS.c.id == bindparam("b_id"))
            .values(
                routed_tier=bindparam("b_tier"),
                router_score=bindparam("b_score"),
                router_latency_ms=bindparam("b_latency"),
            ),
            [
                {
                    "b_id": item.prompt_id,
                    "b_tier": d.tier,
                    "b_score": d.score,
                    "b_latency": d.latency_ms,
                }
                for item, d in decisions
            ],
        )
