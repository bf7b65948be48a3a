"""The one Celery app. Queues are explicit: one per tier, plus `control` for job-level work
(reducing a finished job). Messages carry ids only; results live in SQL, not in Celery."""

from celery import Celery
from celery.signals import after_task_publish
from kombu import Queue

from workers.leases import record_publish
from workers.settings import Settings, get_settings
from workers.task_names import (
    ANSWER_TASK,
    BATCH_POLL_TASK,
    BATCH_SUBMIT_TASK,
    JUDGE_TASK,
    REDUCE_TASK,
    ROUTE_TASK,
    TRAIN_TASK,
)

__all__ = [
    "ANSWER_TASK",
    "BATCH_POLL_TASK",
    "BATCH_SUBMIT_TASK",
    "CONTROL_QUEUE",
    "JUDGE_TASK",
    "REDUCE_TASK",
    "ROUTE_TASK",
    "TRAINING_QUEUE",
    "TRAIN_TASK",
    "app",
    "make_app",
]
CONTROL_QUEUE = "control"
# Local training runs (hours of CPU each): their own queue, so a `--tiers training` worker
# takes them one at a time and no answer waits behind one.
TRAINING_QUEUE = "training"

# A call may wait out a long Retry-After and several backoffs; an unacknowledged message is
# redelivered only after this long (kombu #337), so it must exceed the longest task.
VISIBILITY_TIMEOUT_S = 6 * 3600


def make_app(settings: Settings) -> Celery:
    celery = Celery("distillery", broker=settings.broker_url, include=["workers.tasks"])
    queues = [Queue(name) for name in settings.tiers] + [Queue(CONTROL_QUEUE)]
    queues.append(Queue(TRAINING_QUEUE))
    celery.conf.update(
        task_queues=queues,
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=False,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time per slot: calls are long, and a prefetched message waits
        # behind them instead of going to an idle worker.
        worker_prefetch_multiplier=1,
        # Celery's Redis caveats ask for the same value in all three places. kombu's broker
        # transport is the one that acts on it today (there is no result backend); the
        # others keep a future result backend, or a Celery that reads them, in step.
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        visibility_timeout=VISIBILITY_TIMEOUT_S,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=False,
    )
    return celery


app = make_app(get_settings())

# Every message any process publishes gets a queued lease ticket (workers.leases), so the
# sweeper can tell a message waiting in the broker from one that was lost.
after_task_publish.connect(record_publish, weak=False, dispatch_uid="distillery-leases")
