"""aiohttp plumbing shared by the chat and admin handlers: app keys and JSON replies."""

import asyncio
import json
from typing import Any

from aiohttp import web

from simulator.protocol import error_body
from simulator.state import SimState

STATE = web.AppKey("simulator_state", SimState)
# set when the server shuts down, so requests told to hang stop hanging instead of
# holding a test's `sim.stop()` for `hang_s`
STOPPING = web.AppKey("simulator_stopping", asyncio.Event)


def json_reply(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(payload, status=status, headers=headers)


def error_reply(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = error_body(status, message, code=code, param=param)
    return web.json_response(body, status=status, headers=headers)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a dict; an empty body counts as {} so `curl -X POST` works."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


DEFAULT_PAGE = 20
MAX_PAGE = 100


def page_reply(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    """A cursor page, as OpenAI lists: `after` is the id of the last item already seen."""
    try:
        limit = int(request.query.get("limit", DEFAULT_PAGE))
    except ValueError:
        return error_reply(400, "limit must be an integer", param="limit")
    if not 1 <= limit <= MAX_PAGE:
        return error_reply(400, f"limit must be between 1 and {MAX_PAGE}", param="limit")
    start = _start_after(items, request.query.get("after"))
    data = items[start : start + limit]
    return json_reply({"object": "list", "data": data, "has_more": start + limit < len(items)})


def _start_after(items: list[dict[str, Any]], after: str | None) -> int:
    if after is None:
        return 0
    ids = [item["id"] for item in items]
    return ids.index(after) + 1 if after in ids else len(items)
