"""Running the gateway: one aiohttp server process, or N of them on one port.

With `--processes N` the parent starts N server processes that all listen on the port
(SO_REUSEPORT: the kernel spreads connections over them) and passes SIGTERM / SIGINT on
to them; each process has its own event loop, caller and ledger writer, and they share
the tiers' limits through Redis as workers do. A process stops gracefully: it stops
accepting, lets the requests in flight finish (up to `SHUTDOWN_S`), then flushes its
ledger writer before it exits."""

import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from types import FrameType

from aiohttp import web

from producer.gateway.metrics import MULTIPROC_ENV
from workers.settings import Settings, get_settings

log = logging.getLogger(__name__)
# How long a stopping process lets its requests in flight finish (aiohttp's shutdown_timeout).
SHUTDOWN_S = 60.0
# Connections the kernel queues before the server accepts them (hundreds of clients at once).
LISTEN_BACKLOG = 1024


def serve_one(settings: Settings, host: str, port: int, *, reuse_port: bool = False) -> None:
    from producer.gateway.app import build_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    web.run_app(
        build_app(settings),
        host=host,
        port=port,
        reuse_port=reuse_port,
        shutdown_timeout=SHUTDOWN_S,
        backlog=LISTEN_BACKLOG,
        access_log=None,  # a line per request costs CPU; the ledger has every request
        # A client that disconnects cancels its request's handler, and so the upstream call
        # it waits for (recorded as such: workers.live).
        handler_cancellation=True,
        print=None,
    )


def _child(host: str, port: int) -> None:
    serve_one(get_settings(), host, port, reuse_port=True)


def serve(settings: Settings, host: str, port: int, processes: int) -> None:
    if processes == 1:
        serve_one(settings, host, port)
        return
    made = None
    if not os.environ.get(MULTIPROC_ENV):  # the processes' metrics, summed at each scrape
        made = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="distillery-gateway-metrics-")
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited sockets
    children = [
        spawn.Process(target=_child, args=(host, port), name=f"gateway-{n}")
        for n in range(processes)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)  # each stops gracefully on either signal

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    if made:
        shutil.rmtree(made, ignore_errors=True)
    sys.exit(max((child.exitcode or 0) for child in children))
