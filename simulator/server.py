"""The aiohttp application: routes, shared state, and the models list.

POST /v1/chat/completions   simulated chat completion (see `simulator.chat`)
GET  /v1/models             the configured model names; any other name also works,
                            with the default behaviour
GET  /health                liveness, for docker-compose health checks
/v1/files...                uploads for fine-tuning (see `simulator.files`)
/v1/fine_tuning/jobs...     simulated fine-tuning jobs (see `simulator.fine_tuning`)
/v1/batches...              simulated Batch API (see `simulator.batches`)
/admin/...                  see `simulator.admin`
"""

import asyncio

from aiohttp import web

from simulator import admin, batches, files, fine_tuning
from simulator.behaviour import SimConfig
from simulator.chat import chat_completions
from simulator.responses import STATE, STOPPING, json_reply
from simulator.state import SimState

MAX_BODY_BYTES = 64 * 1024 * 1024  # long-context prompts are legitimate test input
MODEL_OWNER = "distillery-simulator"


def build_app(config: SimConfig) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = SimState(config)
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_release_hanging_requests)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/admin/stats", admin.get_stats)
    app.router.add_post("/admin/reset", admin.reset_stats)
    app.router.add_get("/admin/config", admin.get_config)
    app.router.add_post("/admin/config", admin.post_config)
    app.router.add_post("/admin/fail", admin.post_fail)
    files.register(app)
    fine_tuning.register(app)  # after files: its jobs read the uploads
    batches.register(app)  # after files, likewise
    return app


async def list_models(request: web.Request) -> web.Response:
    models = [
        {"id": name, "object": "model", "created": 0, "owned_by": MODEL_OWNER}
        for name in request.app[STATE].model_names()
    ]
    return json_reply({"object": "list", "data": models})


async def health(request: web.Request) -> web.Response:
    return json_reply({"ok": True})


async def _release_hanging_requests(app: web.Application) -> None:
    app[STOPPING].set()
