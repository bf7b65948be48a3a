"""A worker running in a thread of the current process: the embedded default (no Redis),
used by `distillery demo` and by `distillery submit --wait` without REDIS_URL."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from celery.worker import state


@contextmanager
def embedded_worker(app: Celery, *, queues: list[str], concurrency: int = 16) -> Iterator[None]:
    for name in queues:
        # The app's queues come from the settings it was made with; a process that loads
        # another config later (a test session, a script) may name tiers it has not seen.
        if name not in app.amqp.queues:
            app.amqp.queues.add(name)
    worker = app.WorkController(
        pool="threads",
        concurrency=concurrency,
        queues=queues,
        hostname="embedded@localhost",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
    )
    thread = threading.Thread(target=worker.start, name="distillery-embedded-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        # The worker's loop polls this flag; a warm stop lets in-flight calls finish.
        state.should_stop = 0
        thread.join(timeout=30)
        state.should_stop = None
