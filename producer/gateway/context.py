"""A live request's messages against its tiers' context, with submit's policy
(`producer.context_window`): the context of the largest tier the request may reach, and
that tier's `context_policy` — `reject` answers 400 `context_length_exceeded` before
anything is recorded; `truncate` keeps the head of the last user message and records the
cut in the prompt's metadata (`distillery_truncated`), as submit does."""

import dataclasses
from typing import Any

from producer.context_window import (
    TRUNCATION_METADATA_KEY,
    ContextLimit,
    PromptTooLong,
    fit_to_context,
)
from producer.gateway.wire import ApiError
from producer.readers import PromptInput
from workers.job_settings import RouteSettings

SOURCE = "request"


def fit_request(
    messages: list[dict[str, Any]],
    job: RouteSettings,
    limit: ContextLimit | None,
    max_tokens: int | None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The messages to send (cut, if the policy allows) and the record of a cut, or None.
    `limit` is `context_limit` of the request's model (worked out once per model by the
    gateway); the request's own `max_tokens` is reserved here."""
    if limit is None:
        return messages, None
    limit = dataclasses.replace(limit, answer_tokens=max_tokens or 0)
    if limit.policy == "truncate" and not _cuttable(messages):
        limit = dataclasses.replace(limit, policy="reject")  # only a user's text is cut
    prompt = PromptInput(messages, None, None, 1)
    try:
        fitted = fit_to_context([prompt], limit=limit, job=job, source=SOURCE).prompts[0]
    except PromptTooLong as exc:
        reason = "; ".join(p.removeprefix(f"{SOURCE}:1: ") for p in exc.problems)
        raise ApiError(
            400,
            f"the messages are too long: {reason}",
            param="messages",
            code="context_length_exceeded",
        ) from None
    return fitted.messages, (fitted.metadata or {}).get(TRUNCATION_METADATA_KEY)


def _cuttable(messages: list[dict[str, Any]]) -> bool:
    last = messages[-1]
    return last.get("role") == "user" and isinstance(last.get("content"), str)
