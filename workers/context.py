"""A worker process's context: what all its tasks share — its call loop, the caller (HTTP
client and rate limiter), the ledger writer, job statuses and routers — built once when the
worker starts and closed when it stops (Celery's worker_init / worker_shutdown signals, or
the embedded worker's own start and stop)."""

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from models import get_engine, get_write_engine
from models.work import answer_spend
from workers.budget import Budgets, open_budgets
from workers.caller import Caller
from workers.callloop import CallLoop
from workers.job_settings import RouteSettings
from workers.ledger import LedgerWriter
from workers.response_cache import ResponseCache
from workers.routers import Router, make_router
from workers.running_jobs import RunningJobs
from workers.settings import Settings

log = logging.getLogger(__name__)
RouterKey = tuple[str, tuple[str, ...], str | None]


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine  # reads; the ledger writes through its own engine
    loop: CallLoop
    caller: Caller
    ledger: LedgerWriter
    jobs: RunningJobs
    cache: ResponseCache
    budgets: Budgets
    # Loading a classifier takes a moment: one router per job configuration per process.
    routers: dict[RouterKey, Router] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings) -> "WorkerContext":
        loop = CallLoop()

        engine = get_engine(settings.database_url)

        async def open_clients() -> tuple[Caller, Budgets]:  # in the loop: theirs
            return Caller.open(settings), open_budgets(settings.redis_url, ledger_spend(engine))

        caller, budgets = loop.run(open_clients())
        return cls(
            settings=settings,
            engine=engine,
            loop=loop,
            caller=caller,
            ledger=LedgerWriter(get_write_engine(settings.database_url)),
            jobs=RunningJobs(engine),
            cache=ResponseCache(engine),
            budgets=budgets,
        )

    @classmethod
    async def open_here(cls, settings: Settings, *, job_status_ttl_s: float) -> "WorkerContext":
        """A context on the running event loop (the gateway's server loop): the same parts,
        without a thread of its own between the server and its calls. `job_status_ttl_s`:
        how stale its view of a job's status may be (a cancel stops calls within it)."""
        engine = get_engine(settings.database_url)
        return cls(
            settings=settings,
            engine=engine,
            loop=CallLoop(asyncio.get_running_loop()),
            caller=Caller.open(settings),
            ledger=LedgerWriter(get_write_engine(settings.database_url)),
            jobs=RunningJobs(engine, ttl_s=job_status_ttl_s),
            cache=ResponseCache(engine),
            budgets=open_budgets(settings.redis_url, ledger_spend(engine)),
        )

    async def aclose(self) -> None:
        """`close` for a context opened with `open_here`, from its loop."""
        await asyncio.to_thread(self.ledger.close)
        await self.caller.close()
        await self.budgets.close()

    def close(self) -> None:
        """Finish writing what is queued, then close the connections and the loop."""
        self.ledger.close()
        self.loop.run(self.caller.close())
        self.loop.run(self.budgets.close())
        self.loop.close()

    def router_for(self, job: RouteSettings) -> Router:
        """Called in the call loop only (one thread), so the cache needs no lock."""
        key = (job.router, job.tiers, job.classifier)
        if key not in self.routers:
            self.routers[key] = make_router(
                job.router,
                settings=self.settings,
                tiers=job.tiers,
                classifier_path=job.classifier,
                caller=self.caller,
            )
        return self.routers[key]


def ledger_spend(engine: Engine) -> Callable[[int], Awaitable[dict[str, float]]]:
    """What a job's answer calls have cost so far, per cap, read from the ledger."""

    def read(job_id: int) -> dict[str, float]:
        with engine.connect() as conn:
            return answer_spend(conn=conn, job_id=job_id)

    async def spend(job_id: int) -> dict[str, float]:
        return await asyncio.to_thread(read, job_id)

    return spend


_current: WorkerContext | None = None
_lock = threading.Lock()


def start_worker_context(settings: Settings) -> WorkerContext:
    """This process's context, started now (a second start replaces the first)."""
    global _current
    with _lock:
        previous, _current = _current, WorkerContext.start(settings)
    if previous is not None:
        previous.close()
    return _current


def stop_worker_context() -> None:
    global _current
    with _lock:
        context, _current = _current, None
    if context is not None:
        context.close()
        log.info("worker context closed: ledger flushed, connections and call loop closed")


def worker_context() -> WorkerContext:
    if _current is None:
        raise RuntimeError(
            "no worker context: tasks run in a worker (`distillery worker`, or the embedded "
            "worker of `distillery submit --wait` without REDIS_URL)"
        )
    return _current
