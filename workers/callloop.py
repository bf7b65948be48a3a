"""The worker's call loop: one asyncio event loop per worker process, in a thread of its
own, where every model call of every message the worker holds is in flight.

Celery hands a task a message (a batch of prompt ids) in one of its pool threads; the
task runs the batch as coroutines here, waits, and then sends what follows (escalations,
the reducer). A call waiting for its answer, for
rate-limit capacity or for a backoff is a suspended coroutine, not a thread: a worker
keeps hundreds in flight for little memory and CPU. Each tier's `concurrency` caps its
calls in flight per worker (`in_flight`).
"""

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class CallLoop:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """A loop of its own in a new thread; or, given `loop` (the gateway's server loop,
        already running), that loop, which its owner runs and closes."""
        self.caps: dict[tuple[str, int], asyncio.Semaphore] = {}
        self.thread: threading.Thread | None = None
        if loop is not None:
            self.loop = loop
            return
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="distillery-call-loop", daemon=True
        )
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop from any other thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        """Stop the loop once what is running now has been handed back (call from outside)."""
        if self.thread is None:
            return  # an adopted loop belongs to its owner
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()

    def in_flight(self, name: str, size: int) -> asyncio.Semaphore:
        """The named cap on calls in flight (call from the loop only)."""
        key = (name, size)  # a reloaded config with another size gets a new cap
        if key not in self.caps:
            self.caps[key] = asyncio.Semaphore(size)
        return self.caps[key]


_loops: dict[int, CallLoop] = {}
_lock = threading.Lock()


def call_loop() -> CallLoop:
    """This process's shared loop, for one-off callers outside a worker (CLI commands); a
    worker's context has its own. A forked child gets its own: a loop does not survive fork."""
    with _lock:
        pid = os.getpid()
        if pid not in _loops:
            _loops[pid] = CallLoop()
        return _loops[pid]
