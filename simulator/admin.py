"""The /admin endpoints: read and reset stats, change behaviour, inject faults.

GET  /admin/stats    counters (see `simulator.stats`)
POST /admin/reset    zero the counters (rate-limit windows and pending faults stay)
GET  /admin/config   the current behaviours
POST /admin/config   {"model": name|null, <behaviour fields>...}; null means the default
POST /admin/fail     {"count": N, "status": 500, "retry_after": s|null, "model": name|null,
                      "after_tokens": N|null}  (N: streams break off after N tokens)
"""

from typing import Any

from aiohttp import web

from simulator.responses import STATE, error_reply, json_reply, read_json_object

OPTIONAL_FAULT_FIELDS = ("status", "retry_after", "model", "after_tokens")


async def get_stats(request: web.Request) -> web.Response:
    return json_reply(request.app[STATE].stats.snapshot())


async def reset_stats(request: web.Request) -> web.Response:
    request.app[STATE].stats.reset()
    return json_reply({"ok": True})


async def get_config(request: web.Request) -> web.Response:
    return json_reply(request.app[STATE].config_dict())


async def post_config(request: web.Request) -> web.Response:
    try:
        changes = await read_json_object(request)
        model = changes.pop("model", None)
        _check_model_name(model)
        behaviour = request.app[STATE].configure(model, **changes)
    except (ValueError, TypeError) as exc:
        return error_reply(400, str(exc))
    return json_reply({"model": model, "behaviour": behaviour.to_dict()})


async def post_fail(request: web.Request) -> web.Response:
    try:
        body = await read_json_object(request)
        _check_fault_fields(body)
        _check_model_name(body.get("model"))
        request.app[STATE].fail_next(**body)
    except (ValueError, TypeError) as exc:
        return error_reply(400, str(exc))
    return json_reply({"ok": True})


def _check_model_name(model: Any) -> None:
    if model is not None and not isinstance(model, str):
        raise ValueError(f"model must be a string or null, got {model!r}")


def _check_fault_fields(body: dict[str, Any]) -> None:
    if "count" not in body:
        raise ValueError("count is required")
    unknown = set(body) - {"count", *OPTIONAL_FAULT_FIELDS}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
