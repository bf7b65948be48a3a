"""The dashboard as an aiohttp application: mounted at `/ui` by the gateway
(`distillery serve`) or served alone (`distillery ui`).

Every page is built — its SQL and its template — in a thread (`asyncio.to_thread`): inside
the gateway the event loop is the one answering live traffic, and a page of a 100k-prompt
job must not hold it. Templates autoescape everything (a prompt holding `<script>` is shown
as text), and the Content-Security-Policy allows only the UI's own files besides: no inline
script, nothing from another origin."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from sqlalchemy.exc import DBAPIError

from models import get_engine
from producer.gateway.keys import ApiKeys
from producer.ui import auth, pages
from producer.ui.cache import JobCache
from producer.ui.filters import BadFilter
from producer.ui.pages import PageNotFound
from workers.settings import Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = HERE / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Ui:
    sources: pages.Sources
    keys: ApiKeys
    prefix: str  # where the app is mounted: every link starts with it
    templates: jinja2.Environment

    def render(self, name: str, **context: Any) -> str:
        template = self.templates.get_template(name)
        return template.render(base=self.prefix, login=bool(self.keys), **context)


UI = web.AppKey("ui", Ui)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name: nothing reaches a page raw
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(pages.FORMATS)
    return env


def build_ui_app(settings: Settings, *, prefix: str = "/ui") -> web.Application:
    app = web.Application(middlewares=[html_errors, secured, logged_in])
    sources = pages.Sources(get_engine(settings.database_url), settings, JobCache())
    app[UI] = Ui(sources, ApiKeys.from_env(settings), prefix.rstrip("/"), templates())
    app.router.add_get("", index)
    app.router.add_get("/", index)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    for path, build in pages.PAGES.items():
        app.router.add_get(path, _page(build))
    app.router.add_get("/training/{file_id:\\d+}/download/{split:train|validation}", download)
    app.router.add_static("/static/", STATIC)
    return app


def build_standalone_app(settings: Settings) -> web.Application:
    """`distillery ui`: the dashboard at /ui, and / sends there."""
    root = web.Application()
    root.add_subapp("/ui", build_ui_app(settings))
    root.router.add_get("/", to_the_ui)
    return root


async def to_the_ui(request: web.Request) -> web.Response:
    return _redirect("/ui/jobs")


def _redirect(location: str) -> web.Response:
    raise web.HTTPSeeOther(location)


async def index(request: web.Request) -> web.Response:
    return _redirect(request.app[UI].prefix + "/jobs")


def _page(build: Callable[..., tuple[str, dict[str, Any]]]) -> Handler:
    """A handler that builds the page in a thread: its queries and its template."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ui = request.app[UI]
        args = dict(request.match_info)
        query = dict(request.query)
        html = await asyncio.to_thread(_build, ui, build, args, query)
        return web.Response(text=html, content_type="text/html")

    return handler


def _build(ui: Ui, build: Callable[..., tuple[str, dict[str, Any]]], args: Any, query: Any) -> str:
    template, context = build(ui.sources, query=query, **args)
    return ui.render(template, **context)


async def download(request: web.Request) -> web.StreamResponse:
    """A training file (or its validation split), as the reducer wrote it: only the path
    its row records is ever served, never one from the request."""
    ui = request.app[UI]
    file_id, split = int(request.match_info["file_id"]), request.match_info["split"]
    path = await asyncio.to_thread(pages.training_file_path, ui.sources.engine, file_id, split)
    disposition = f'attachment; filename="job-file-{file_id}-{split}.jsonl"'
    return web.FileResponse(path, headers={"Content-Disposition": disposition})


# --- login ---------------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    return _html(request.app[UI].render("login.html", error=None, on_login_page=True))


async def login(request: web.Request) -> web.Response:
    ui = request.app[UI]
    form = await request.post()
    key = str(form.get("key", ""))
    value = auth.session_for(ui.keys, key) if ui.keys else None
    if value is None:
        return _html(
            ui.render("login.html", error="That key is not one of the gateway's keys."), 401
        )
    response = web.HTTPSeeOther(ui.prefix + "/jobs")
    response.set_cookie(
        auth.COOKIE,
        value,
        max_age=auth.SESSION_S,
        path=ui.prefix or "/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    ui = request.app[UI]
    response = web.HTTPSeeOther(ui.prefix + "/login")
    response.del_cookie(auth.COOKIE, path=ui.prefix or "/")
    raise response


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


# --- middlewares ---------------------------------------------------------------------------


def _local_path(request: web.Request) -> str:
    return request.path[len(request.app[UI].prefix) :] or "/"


@web.middleware
async def logged_in(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With gateway keys set, every page but the login needs a valid session cookie."""
    ui = request.app[UI]
    path = _local_path(request)
    if not ui.keys or path == "/login" or path.startswith("/static/"):
        return await handler(request)
    if auth.valid_session(ui.keys, request.cookies.get(auth.COOKIE)):
        return await handler(request)
    raise web.HTTPSeeOther(ui.prefix + "/login")


@web.middleware
async def secured(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    return response


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as pages (the gateway's own middleware would answer in OpenAI's JSON)."""
    ui = request.app[UI]
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            error.headers.update(SECURITY_HEADERS)
            raise
        return _error(ui, error.status, error.reason)
    except PageNotFound as error:
        return _error(ui, 404, str(error))
    except BadFilter as error:
        return _error(ui, 400, str(error))
    except DBAPIError as error:
        log.warning("ui: the database is unreachable: %s", type(error.orig or error).__name__)
        return _error(ui, 503, "The database is unreachable; try again in a moment.")


def _error(ui: Ui, status: int, message: str) -> web.Response:
    response = _html(ui.render("error.html", status=status, message=message), status)
    response.headers.update(SECURITY_HEADERS)
    return response
