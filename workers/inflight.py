"""Named, bounded thread pools per worker process, for work that blocks a thread: the
route step (the LLM router makes its call through the synchronous client). Answers do
not use them: their calls are coroutines in the call loop (`workers.callloop`).
"""

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pools: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def pool_for(name: str, size: int) -> ThreadPoolExecutor:
    with _lock:
        if name not in _pools:
            _pools[name] = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"calls-{name}")
        return _pools[name]


def run_all(name: str, size: int, work: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`work` on every item in the named pool; every item runs even when one fails, then the
    first failure is raised (so Celery's autoretry sees it, and the retry skips what's done)."""
    futures: list[Future[R]] = [pool_for(name, size).submit(work, item) for item in items]
    wait(futures)
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
    return [future.result() for future in futures]
