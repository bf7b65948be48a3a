"""`distillery worker`: a Celery worker consuming the queues of some tiers (all by default)."""

import os
import socket

from sqlalchemy.engine import Engine

from producer.errors import UserError
from workers.errors import ExitCode
from workers.settings import Settings


def worker_queues(settings: Settings, tiers: str | None, control: bool) -> list[str]:
    """The queues to consume: the named tiers (every configured tier when None, as `celery
    worker` consumes every declared queue), and `control` unless told not to."""
    if tiers is None:
        tiers = ",".join(settings.tiers)
    names = [name.strip() for name in tiers.split(",") if name.strip()]
    if not names:
        raise UserError("--tiers needs at least one tier name", ExitCode.USAGE)
    from workers.app import CONTROL_QUEUE, TRAINING_QUEUE

    if TRAINING_QUEUE in names:
        if names != [TRAINING_QUEUE]:
            raise UserError(
                "the training queue needs a worker of its own (--tiers training): a run "
                "holds the worker's CPU for minutes to hours",
                ExitCode.USAGE,
            )
        return names  # nothing of `control` either: one run at a time, nothing else
    for name in names:
        settings.require_tier(name, "--tiers")

    return [*names, CONTROL_QUEUE] if control else names


def run_worker(
    settings: Settings,
    *,
    tiers: str | None,
    concurrency: int,
    loglevel: str,
    control: bool,
    engine: Engine,
) -> None:
    if not settings.redis_url:
        raise UserError(
            "a separate worker needs a broker: set REDIS_URL (e.g. redis://localhost:6379/0)",
            ExitCode.USAGE,
        )
    queues = worker_queues(settings, tiers, control)
    from workers.app import TRAINING_QUEUE, app

    if TRAINING_QUEUE in queues:
        concurrency = 1  # one training run at a time per worker

    # A unique node name per process, so several workers can run on one host.
    node = f"{'+'.join(q for q in queues if q != 'control')}-{os.getpid()}@{socket.gethostname()}"
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queues),
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            loglevel,
            "--hostname",
            node,
            "--without-mingle",
            "--without-gossip",
        ]
    )
