"""The dashboard for a test: served over real HTTP on a free port from a thread of its own
(its own event loop), as `distillery ui` serves it; and what the tests read out of its
pages."""

import asyncio
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from tests.helpers.services import free_port
from workers.settings import Settings


@contextmanager
def ui_server(settings: Settings) -> Iterator[str]:
    """The standalone dashboard's base URL (http://127.0.0.1:PORT), stopped on exit."""
    from producer.ui.app import build_standalone_app

    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_standalone_app(settings), access_log=None)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="ui-server", daemon=True)
    thread.start()
    assert started.wait(30), "the dashboard did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def data_ids(html: str, name: str) -> list[int]:
    """The ids a listing marks its rows with (`data-prompt="12"`), in page order."""
    return [int(n) for n in re.findall(rf'data-{name}="(\d+)"', html)]


def link(html: str, element_id: str) -> str | None:
    """The href of the element with that id (the pager's `next`), unescaped."""
    found = re.search(rf'id="{element_id}" href="([^"]*)"', html)
    return None if found is None else found.group(1).replace("&amp;", "&")


def cell(html: str, attribute: str) -> str:
    """The text of the element carrying `attribute` (e.g. `id="total"`)."""
    found = re.search(rf"{attribute}[^>]*>([^<]*)<", html)
    assert found is not None, f"no element with {attribute}"
    return found.group(1).strip()


def as_int(text: Any) -> int:
    return int(str(text).replace(",", "").split()[0])
