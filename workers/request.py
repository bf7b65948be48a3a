"""The request a job's prompt becomes, and where a prompt goes when a tier gives up.
Pure functions over the job's frozen `params` (no client, no database)."""

from typing import Any


def build_request(params: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    system = params.get("system_prompt")
    if system and not any(m.get("role") in ("system", "developer") for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    request: dict[str, Any] = {"messages": messages, "temperature": params.get("temperature", 0.7)}
    if params.get("max_tokens"):
        request["max_tokens"] = params["max_tokens"]
    if params.get("logprobs"):
        request["logprobs"] = True
        request["top_logprobs"] = 0  # llama.cpp sends logprobs only when this is set
    return request


def next_tier(params: dict[str, Any], tier: str) -> str | None:
    """The first tier of the job's fallback chain above `tier` (tiers ranked by config order)."""
    order: list[str] = params.get("tiers", [])
    if tier not in order:
        return None
    above = [
        t for t in params.get("fallback", []) if t in order and order.index(t) > order.index(tier)
    ]
    return above[0] if above else None
