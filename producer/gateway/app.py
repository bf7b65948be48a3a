"""The gateway's aiohttp application (`distillery serve`): an OpenAI-compatible
`POST /v1/chat/completions` that routes each request through the workers' answering step
(`workers.live`), `GET /v1/models` and `GET /healthz`.

Why aiohttp and not FastAPI/uvicorn: it is already the project's HTTP stack (the tier
client and the simulator), so the gateway adds no dependency, and its handlers run on the
same event loop as the calls they make (the `Caller`'s aiohttp sessions and the Redis
limiter): a request costs no thread hop between the server and its upstream call, which
is most of what the gateway adds to a call's latency. A validation layer would only
re-check what `wire.parse_chat` checks."""

import asyncio
import dataclasses
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from models.live import NotALiveJob
from models.types import utcnow
from producer.context_window import TRUNCATION_METADATA_KEY, ContextLimit, context_limit
from producer.gateway import metrics
from producer.gateway.context import fit_request
from producer.gateway.keys import KEY_ID, ApiKeys
from producer.gateway.wire import (
    ROUTE_MODEL,
    ApiError,
    ChatCall,
    Relayed,
    all_failed,
    bad_request,
    completion_body,
    model_names,
    parse_chat,
    sse,
    stream_chunks,
    stream_error,
    trace_headers,
)
from producer.ui.app import build_ui_app
from workers import shadow
from workers.chat import elapsed_ms
from workers.context import WorkerContext
from workers.heap import settle_for_serving
from workers.job_settings import RouteSettings
from workers.live import (
    LiveOutcome,
    LiveRequest,
    StreamBroken,
    answer_live,
    open_live_job,
    relay,
)
from workers.routers import RouterError
from workers.settings import Settings

log = logging.getLogger(__name__)

JOB_HEADER = "x-distillery-job"
# How stale the gateway's view of a live job's status may be: a cancelled live job stops
# answering within this. Workers re-read every 0.1 s (their calls come in bulk); a gateway
# with sparse traffic would otherwise read the job's row for nearly every request.
LIVE_JOB_STATUS_TTL_S = 1.0
MAX_JOB_NAME = 200
# A job name a header may give: letters, digits and . _ : @ / - (no spaces or controls),
# starting with a letter or digit. Each new name makes a job row: with keys set, only a
# client with a key can make them.
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]*")
# Live job ids a process remembers (by name, the most recent): each new `x-distillery-job`
# would otherwise grow the cache for as long as the process runs.
MAX_CACHED_JOBS = 1024


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """What a request's `model` decides, the same for every request naming it."""

    job: RouteSettings  # the live job's settings, with the model's router or tier
    tier: str | None  # a tier by name (None: a router decides)
    limit: ContextLimit | None  # the context its messages must fit (None: unbounded)


@dataclass
class Gateway:
    """What every request of one gateway process shares."""

    settings: Settings
    ctx: WorkerContext
    job: RouteSettings  # a new live job's settings: the config's, frozen into it
    models: list[str]
    redis: Any = None  # a client of its own for /healthz (None: no Redis configured)
    in_flight: int = 0  # chat requests being answered by this process
    # Live job ids by name, once opened: the most recent MAX_CACHED_JOBS names.
    live_jobs: OrderedDict[str, int] = field(default_factory=OrderedDict)
    shadows: set[asyncio.Task[Any]] = field(default_factory=set)  # sent after their answers
    job_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # By (model, the caller asked for logprobs): at most twice as many as `models`.
    plans: dict[tuple[str, bool], ModelPlan] = field(default_factory=dict)

    def plan_for(self, call: ChatCall) -> ModelPlan:
        """The request's settings, worked out on its model's first request: a request
        costs no settings copy, re-validation or context look-up of its own."""
        key = (call.model, call.logprobs)
        plan = self.plans.get(key)
        if plan is None:
            job, tier = self._settings_for(call)
            plan = self.plans[key] = ModelPlan(job, tier, context_limit(job, self.settings))
        return plan

    def _settings_for(self, call: ChatCall) -> tuple[RouteSettings, str | None]:
        """The request's settings, and the tier it names (None: a router decides)."""
        if call.model == ROUTE_MODEL:
            return self.job, None
        if call.model.startswith(ROUTE_MODEL + ":"):
            return self.job.model_copy(update={"router": call.model.split(":", 1)[1]}), None
        # A tier by name: that tier only, no escalation; confidence only from logprobs the
        # caller asked for.
        direct = {"fallback": (), "logprobs": call.logprobs, "tiers_in_order": (call.model,)}
        return self.job.model_copy(update=direct), call.model

    def maybe_shadow(self, live: LiveRequest, outcome: LiveOutcome) -> None:
        """Send a sample of the answers below the teacher tier to the teacher through the
        workers (`workers.shadow`), once the caller has its answer: it never waits for it."""
        rate, teacher = self.settings.gateway.shadow_rate, self.settings.teacher.tier
        if not shadow.wanted(outcome, rate, teacher):
            return
        task = asyncio.create_task(shadow.send_shadow(self.ctx, live, outcome))
        self.shadows.add(task)
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, task: "asyncio.Task[Any]") -> None:
        self.shadows.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not send a shadow request: %s", task.exception())

    async def job_id(self, name: str) -> int:
        """The live job's id; opened (made, if new) on its name's first request. Only the
        most recent MAX_CACHED_JOBS names are remembered: a name used again after that is
        looked up again (the job row stays the same)."""
        known = self.live_jobs.get(name)
        if known is not None:
            self.live_jobs.move_to_end(name)
            return known
        async with self.job_lock:
            if name not in self.live_jobs:
                self.live_jobs[name] = await asyncio.to_thread(
                    open_live_job, self.ctx, name, self.job
                )
                while len(self.live_jobs) > MAX_CACHED_JOBS:
                    self.live_jobs.popitem(last=False)
            return self.live_jobs[name]


GATEWAY = web.AppKey("gateway", Gateway)
SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", ApiKeys)


def build_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[measured, openai_errors, authorized, bounded],
        client_max_size=settings.gateway.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[KEYS] = ApiKeys.from_env(settings)
    app.cleanup_ctx.append(_gateway_context)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", prometheus)
    app.add_subapp("/ui", build_ui_app(settings))  # the dashboard, behind the same keys
    return app


async def _gateway_context(app: web.Application) -> Any:
    """The worker context on the server's own loop: built at start-up, and at shutdown
    closed after the last request (the ledger flushed)."""
    settings = app[SETTINGS]
    ctx = await WorkerContext.open_here(settings, job_status_ttl_s=LIVE_JOB_STATUS_TTL_S)
    # The response cache only when the config asks for it ([gateway] cache = true).
    job = RouteSettings.from_config(settings, cache=settings.gateway.cache)
    gateway = Gateway(settings, ctx, job, model_names(list(settings.tiers)))
    if settings.redis_url:
        import redis.asyncio

        gateway.redis = redis.asyncio.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=2
        )
    app[GATEWAY] = gateway
    # Start-up is over: the collector stops walking what it made (as a worker's does,
    # workers/heap.py). Profiled under load, collections run from the allocations of
    # accepting connections took ~11 % of the gateway's CPU.
    settle_for_serving()
    yield
    await asyncio.gather(*gateway.shadows, return_exceptions=True)  # recorded and sent
    await ctx.aclose()
    if gateway.redis is not None:
        await gateway.redis.aclose()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


MODEL = web.RequestKey("model", str)


@web.middleware
async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every chat request counted by its model and the status it got."""
    if request.path != "/v1/chat/completions":
        return await handler(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        metrics.observe_request(request.get(MODEL, "-"), status)


async def prometheus(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer in OpenAI's shape, including aiohttp's own (404, 405, 413)."""
    try:
        return await handler(request)
    except ApiError as error:
        return web.json_response(error.body(), status=error.status, headers=error.headers)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        api = ApiError(error.status, error.text or error.reason, code=_code(error.reason))
        return web.json_response(api.body(), status=error.status)


def _code(reason: str) -> str:
    return reason.lower().replace(" ", "_")


@web.middleware
async def authorized(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With keys configured, every /v1 request needs one (/healthz stays open for probes)."""
    keys = request.app[KEYS]
    if keys and request.path.startswith("/v1/"):
        request[KEY_ID] = keys.check(request.headers.get("Authorization"))
    return await handler(request)


@web.middleware
async def bounded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """At most `max_concurrency` chat requests in flight per process: the next one gets
    503 at once (a client or load balancer can go elsewhere) instead of a queue without
    limit in front of the tiers' own limits."""
    if request.path != "/v1/chat/completions":
        return await handler(request)
    gateway = request.app[GATEWAY]
    limit = gateway.settings.gateway.max_concurrency
    if gateway.in_flight >= limit:
        raise ApiError(
            503,
            f"this gateway process is at its {limit} requests in flight; retry shortly",
            type_="service_unavailable",
            code="overloaded",
            headers={"Retry-After": "1"},
        )
    gateway.in_flight += 1
    try:
        return await handler(request)
    finally:
        gateway.in_flight -= 1


async def list_models(request: web.Request) -> web.Response:
    created = int(utcnow().timestamp())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "distillery"}
        for name in request.app[GATEWAY].models
    ]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    """Whether the database and Redis answer; 503 naming the one that does not."""
    gateway = request.app[GATEWAY]
    checks = {
        "database": await _check(asyncio.to_thread(_ping_database, gateway.ctx)),
        "redis": await _check(gateway.redis.ping()) if gateway.redis else "not configured",
    }
    healthy = all(v in ("ok", "not configured") for v in checks.values())
    return web.json_response({"ok": healthy, **checks}, status=200 if healthy else 503)


async def _check(probe: Awaitable[Any]) -> str:
    try:
        await asyncio.wait_for(probe, timeout=5)
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
    return "ok"


def _ping_database(ctx: WorkerContext) -> None:
    with ctx.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    gateway = request.app[GATEWAY]
    call = parse_chat(await request.read(), models=gateway.models)
    request[MODEL] = call.model
    plan = gateway.plan_for(call)
    job = plan.job
    meta: dict[str, Any] = {"model": call.model}
    if KEY_ID in request:
        meta["key_sha256"] = request[KEY_ID]
    messages, cut = fit_request(call.messages, job, plan.limit, call.max_tokens)
    if cut is not None:
        meta[TRUNCATION_METADATA_KEY] = cut
        call = dataclasses.replace(call, messages=messages)
    live = LiveRequest(
        call.messages,
        call.request(logprobs=job.logprobs),
        job,
        plan.tier,
        meta,
        gateway.settings.gateway.max_queue_s,
        gateway.settings.gateway.stream_holdback_tokens if call.stream else None,
    )
    with services_up():
        job_id = await _live_job(gateway, request.headers.get(JOB_HEADER))
        outcome = await _answer(live, gateway, job_id)
    if outcome.completion is None:
        raise all_failed(outcome) if outcome.failures else stopped(outcome)
    if outcome.held is not None:
        return await relay_answer(request, call, live, outcome, started)
    gateway.maybe_shadow(live, outcome)
    if call.stream:
        return await stream_answer(request, call, outcome, started)
    response = web.json_response(completion_body(call, outcome), headers=trace_headers(outcome))
    total = elapsed_ms(started) / 1000
    metrics.observe_outcome(outcome, total_s=total, first_byte_s=total, stream=False)
    return response


async def stream_answer(
    request: web.Request, call: ChatCall, outcome: LiveOutcome, started: float
) -> web.StreamResponse:
    """The hold-back cascade's answer, streamed: every tier's answer was held until its
    confidence was known, so what streams is the final tier's only (an escalation is
    invisible), and the whole decision trace fits in the headers. The time it was held is
    the time to first byte (`x-distillery-held-ms`)."""
    response = web.StreamResponse(headers=stream_headers(outcome, started))
    await response.prepare(request)
    first_byte = elapsed_ms(started) / 1000
    # The answer is whole by now: one write of all its chunks (a write per token would cost
    # a trip through the loop each, and the client sees the same events either way).
    events = [sse(chunk) for chunk in stream_chunks(call, outcome)]
    await response.write(b"".join([*events, sse("[DONE]")]))
    await response.write_eof()
    total = elapsed_ms(started) / 1000
    metrics.observe_outcome(outcome, total_s=total, first_byte_s=first_byte, stream=True)
    return response


async def relay_answer(
    request: web.Request, call: ChatCall, live: LiveRequest, outcome: LiveOutcome, started: float
) -> web.StreamResponse:
    """The hold-back cascade on the first `stream_holdback_tokens` tokens: the kept tier's
    held tokens at once, then the rest as the tier sends it (`workers.live.relay`). If the
    tier fails after tokens were sent, the stream ends with an error event (the SDK raises
    `APIError`) and no `[DONE]`; the prompt is recorded failed with what came."""
    assert outcome.held is not None
    gateway = request.app[GATEWAY]
    response = web.StreamResponse(headers=stream_headers(outcome, started))
    relayed = Relayed(call, outcome)

    async def send(events: list[dict[str, Any]]) -> None:
        if not response.prepared:
            await response.prepare(request)
            relayed.first_byte_s = elapsed_ms(started) / 1000
        body = b"".join(sse(chunk) for chunk in relayed.chunks(events))
        if body:
            await response.write(body)

    whole = None
    try:
        with services_up():
            whole = await relay(gateway.ctx, outcome.held, send)
        end = sse("[DONE]")  # after the answer's commit
    except StreamBroken as broken:
        end = sse(stream_error(str(broken)).body())
    except ApiError as error:  # the ledger or Redis failed under the stream: say so in it
        end = sse(error.body())
    await send([])  # the response is started even if the tier sent nothing
    await response.write(end)
    await response.write_eof()
    total = elapsed_ms(started) / 1000
    metrics.observe_outcome(outcome, total_s=total, first_byte_s=relayed.first_byte_s, stream=True)
    if whole is not None:
        gateway.maybe_shadow(live, dataclasses.replace(outcome, completion=whole))
    return response


def stream_headers(outcome: LiveOutcome, started: float) -> dict[str, str]:
    return {
        **trace_headers(outcome),
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "x-distillery-held-ms": f"{elapsed_ms(started):.1f}",
    }


@contextmanager
def services_up() -> Iterator[None]:
    """The database or Redis failing under a request: 503, saying which (the request may be
    retried; what it had recorded stays recorded)."""
    try:
        yield
    except RedisError as exc:
        raise unavailable("Redis (the tiers' shared limits)", exc) from None
    except DBAPIError as exc:
        raise unavailable("the database (the ledger)", exc.orig or exc) from None


def unavailable(what: str, exc: BaseException) -> ApiError:
    log.warning("503: %s is unreachable: %s", what, type(exc).__name__)
    return ApiError(
        503,
        f"{what} is unreachable ({type(exc).__name__}); try again later",
        type_="service_unavailable",
        code="service_unavailable",
    )


def stopped(outcome: LiveOutcome) -> ApiError:
    return ApiError(
        503,
        f"live job {outcome.job_id} is not running (cancelled); name another with {JOB_HEADER}",
        type_="service_unavailable",
        code="job_not_running",
        headers=trace_headers(outcome),
    )


async def _live_job(gateway: Gateway, named: str | None) -> int:
    name = named.strip() if named else f"live-{utcnow():%Y-%m-%d}"
    if len(name) > MAX_JOB_NAME or not JOB_NAME.fullmatch(name):
        raise bad_request(
            f"{JOB_HEADER} must be 1 to {MAX_JOB_NAME} letters, digits or . _ : @ / -, "
            "starting with a letter or digit"
        )
    try:
        return await gateway.job_id(name)
    except NotALiveJob as exc:
        raise bad_request(f"{JOB_HEADER}: {exc}") from None


async def _answer(live: LiveRequest, gateway: Gateway, job_id: int) -> LiveOutcome:
    try:
        return await answer_live(live, gateway.ctx, job_id=job_id)
    except RouterError as exc:
        raise ApiError(
            400, f"the router of this model is not available: {exc}", code="model_not_available"
        ) from None
