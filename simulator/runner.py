"""Ways to run the simulator: blocking (`run`, for the CLI) or on a background thread
(`start_in_thread`, for tests, demos and benchmarks in the same process)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import TracebackType
from typing import Any

from aiohttp import web

from simulator.batches import BATCHES
from simulator.behaviour import ModelBehaviour, SimConfig
from simulator.responses import STATE
from simulator.server import build_app
from simulator.state import SimState

# how long stop() lets in-flight requests finish; hanging ones are released at once anyway
SHUTDOWN_TIMEOUT_S = 2.0
# load tests open hundreds of connections at once; the usual 128 would make some wait
# out a SYN retry (a second or more) and show up as fake latency
LISTEN_BACKLOG = 1024
STARTUP_TIMEOUT_S = 30.0


def run(config: SimConfig, host: str = "127.0.0.1", port: int = 8900) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM). No access log: it would cost more than
    the simulated model does at load-test rates."""

    def announce(_aiohttp_banner: str) -> None:  # called once the port is really listening
        print(f"Distillery simulator on http://{host}:{port}/v1 (stats: /admin/stats)", flush=True)

    web.run_app(
        build_app(config),
        host=host,
        port=port,
        access_log=None,
        print=announce,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        backlog=LISTEN_BACKLOG,
    )


def start_in_thread(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> RunningSimulator:
    """Start serving on a daemon thread; returns once the socket is listening.
    Port 0 picks a free port (read it back from `.port`)."""
    sock = _listening_socket(host, port)
    app = build_app(config)
    simulator = RunningSimulator(app, sock, host)
    simulator._start()
    return simulator


class RunningSimulator:
    """A simulator serving on its own thread and event loop. Every method is safe to call
    from any thread: they work on the shared state directly, not over HTTP."""

    def __init__(self, app: web.Application, sock: socket.socket, host: str) -> None:
        self.host = host
        self.port: int = sock.getsockname()[1]
        self._app = app
        self._state: SimState = app[STATE]
        self._sock = sock
        self._loop = asyncio.new_event_loop()
        self._stop_requested = asyncio.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._serve, name=f"simulator:{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        """The server root, e.g. for /admin/stats."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client wants as base_url."""
        return f"{self.url}/v1"

    def stats(self) -> dict[str, Any]:
        return self._state.stats.snapshot()

    def reset_stats(self) -> None:
        self._state.stats.reset()

    def configure(self, model: str | None = None, **changes: Any) -> ModelBehaviour:
        return self._state.configure(model, **changes)

    def configure_batches(self, **changes: Any) -> dict[str, Any]:
        """The Batch API's pace and faults (simulator.batches): step_s,
        expire_after_fraction, duplicate_lines, unknown_lines, unavailable_next."""
        faults = self._app[BATCHES].faults
        faults.update(changes)
        return faults.to_dict()

    def fail_next(
        self,
        count: int,
        status: int = 500,
        retry_after: float | None = None,
        model: str | None = None,
        after_tokens: int | None = None,
    ) -> None:
        self._state.fail_next(
            count, status=status, retry_after=retry_after, model=model, after_tokens=after_tokens
        )

    def stop(self) -> None:
        """Idempotent; returns once the server thread has finished."""
        if self._thread.is_alive():
            # the loop may close between the check and the call if the server just died
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop_requested.set)
            self._thread.join()

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        self._thread.start()
        if not self._started.wait(STARTUP_TIMEOUT_S):
            raise RuntimeError("the simulator did not start listening in time")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("the simulator failed to start") from self._error

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve_until_stopped())
        except BaseException as exc:  # reported to the starting thread, not lost here
            self._error = exc
        finally:
            self._started.set()  # never leave _start() waiting, whatever happened
            self._sock.close()  # already closed after a clean stop; not after a failed start
            self._loop.close()

    async def _serve_until_stopped(self) -> None:
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            await web.SockSite(runner, self._sock, backlog=LISTEN_BACKLOG).start()
            self._started.set()
            await self._stop_requested.wait()
        finally:
            await runner.cleanup()


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound before the thread starts, so port 0 resolves to a real port right away and a
    port already in use fails in the caller's thread."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
