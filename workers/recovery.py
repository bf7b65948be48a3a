"""A worker's part in automatic recovery: its leases (workers.leases.Holder), kept from
Celery's signals as messages arrive and tasks end, and its sweeper (workers.sweeper).
Started with the worker's context when it has Redis and `[recovery] enabled`."""

import logging
from typing import Any

from celery.signals import task_postrun, task_received, task_rejected, task_revoked

from workers.leases import Holder, LeaseStore, cover_of, new_worker_id, ticket_of
from workers.settings import Settings
from workers.sweeper import Sweeper

log = logging.getLogger(__name__)

_holder: Holder | None = None
_sweeper: Sweeper | None = None


def start_recovery(settings: Settings, engine: Any) -> None:
    global _holder, _sweeper
    if not settings.redis_url or not settings.recovery.enabled:
        return
    from workers.app import app

    store = LeaseStore.from_url(settings.redis_url)
    _holder = Holder(store, settings.recovery, new_worker_id())
    _sweeper = Sweeper(store=store, engine=engine, app=app, settings=settings)
    _sweeper.start()
    log.info(
        "recovery on: lease %.0f s, sweep every %.0f s",
        settings.recovery.lease_s,
        settings.recovery.sweep_s,
    )


def stop_recovery() -> None:
    global _holder, _sweeper
    if _sweeper is not None:
        _sweeper.close()
    if _holder is not None:
        _holder.close()
    _holder = _sweeper = None


def recovering() -> bool:
    return _holder is not None


@task_received.connect
def _hold(request: Any = None, **_: Any) -> None:
    holder = _holder
    cover = cover_of(request.name, request.args) if request is not None else None
    if holder is not None and cover is not None:
        holder.take(ticket_of(request.request_dict), cover)


@task_postrun.connect
def _release_run(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if _holder is not None and task_id is not None and task is not None:
        _holder.release(f"{task_id}:{task.request.retries or 0}")


@task_revoked.connect
def _release_revoked(request: Any = None, **_: Any) -> None:
    if _holder is not None and request is not None:
        _holder.release(ticket_of(request.request_dict))


@task_rejected.connect
def _release_rejected(message: Any = None, **_: Any) -> None:
    headers = getattr(message, "headers", None)
    if _holder is not None and headers and "id" in headers:
        _holder.release(ticket_of(headers))
