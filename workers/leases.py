"""Leases: which messages wait in the broker and which a live worker holds, kept in Redis so
the sweeper (`workers.sweeper`) can find the work nobody holds any more.

Every published message gets a *ticket* ("<task id>:<retries>", unique per publish: a Celery
retry republishes the same id with one more retry) naming what it covers — prompt ids, or the
job a reduce is for. The ticket is *queued* when the message is published, moves into the
receiving worker's *held* hash when the message arrives (`task_received`, before the task
starts, so a prefetched message is held too), and is dropped when its task ends. A worker
proves it is alive with a key that expires after `lease_s`; every `heartbeat_s` it rewrites
that key and its whole held hash from memory, so after Redis lost its data every live
worker's leases are back within one heartbeat.

Lease bookkeeping never fails a task or a publish: a Redis error is logged, the next
heartbeat rewrites the worker's leases, and at worst the sweeper re-sends a message whose
prompts a worker still holds (a duplicate message, skipped or at most one call per prompt).
"""

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis
from redis.exceptions import RedisError

from workers.settings import RecoveryConfig, get_settings
from workers.task_names import ANSWER_TASK, REDUCE_TASK, ROUTE_TASK

log = logging.getLogger(__name__)

PREFIX = "distillery:leases"
QUEUED = f"{PREFIX}:queued"  # hash: ticket -> cover (JSON)
WORKERS = f"{PREFIX}:workers"  # set: worker ids that have held something
REQUEUES = f"{PREFIX}:requeues"  # hash: prompt id -> times the sweeper re-sent it
REQUEUES_TTL_S = 7 * 24 * 3600  # the counts go a week after the last re-send
SWEEP_LOCK = f"{PREFIX}:sweep-lock"
# Set when a worker takes a ticket, so a publisher's ticket written after the message had
# already arrived (the publisher was slow) is not left queued forever.
RECEIVED_TTL_S = 24 * 3600


def held_key(worker: str) -> str:
    return f"{PREFIX}:held:{worker}"


def alive_key(worker: str) -> str:
    return f"{PREFIX}:alive:{worker}"


def received_key(ticket: str) -> str:
    return f"{PREFIX}:received:{ticket}"


# KEYS: queued hash, received marker. ARGV: ticket, cover.
_QUEUE_UNLESS_RECEIVED = """
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
"""
# KEYS: lock. ARGV: owner token. Releases the lock only if this sweeper still owns it.
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def ticket_of(headers: Mapping[str, Any]) -> str:
    return f"{headers['id']}:{headers.get('retries') or 0}"


def cover_of(task: str, args: Sequence[Any]) -> str | None:
    """What a message of `task` with `args` covers, as stored; None for other tasks."""
    if task in (ANSWER_TASK, ROUTE_TASK) and args:
        return json.dumps({"prompts": [int(pid) for pid in args[0]]})
    if task == REDUCE_TASK and args:
        return json.dumps({"reduce": int(args[0])})
    return None


@dataclass
class Coverage:
    """What is queued or held by a live worker at one look, and what dead workers held."""

    prompts: set[int] = field(default_factory=set)
    reduces: set[int] = field(default_factory=set)
    # Tickets by worker, of workers whose alive key is gone.
    dead: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, cover: str) -> None:
        parsed = json.loads(cover)
        self.prompts.update(parsed.get("prompts", ()))
        if "reduce" in parsed:
            self.reduces.add(parsed["reduce"])


class LeaseStore:
    """The Redis side of leases: every key lives under PREFIX."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._queue = client.register_script(_QUEUE_UNLESS_RECEIVED)
        self._release_lock = client.register_script(_RELEASE_LOCK)

    @classmethod
    def from_url(cls, url: str) -> "LeaseStore":
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))

    def queue(self, ticket: str, cover: str) -> None:
        self._queue(keys=[QUEUED, received_key(ticket)], args=[ticket, cover])

    def queue_many(self, tickets: Mapping[str, str]) -> None:
        if tickets:
            self.client.hset(QUEUED, mapping=_fields(tickets))

    def drop_queued(self, tickets: Sequence[str]) -> None:
        if tickets:
            self.client.hdel(QUEUED, *tickets)

    def take(self, worker: str, ticket: str, cover: str, lease_ms: int) -> None:
        pipe = self.client.pipeline()
        pipe.set(received_key(ticket), 1, ex=RECEIVED_TTL_S)
        pipe.hdel(QUEUED, ticket)
        pipe.hset(held_key(worker), ticket, cover)
        pipe.set(alive_key(worker), 1, px=lease_ms)
        pipe.sadd(WORKERS, worker)
        pipe.execute()

    def release(self, worker: str, ticket: str) -> None:
        self.client.hdel(held_key(worker), ticket)

    def beat(self, worker: str, held: Mapping[str, str], lease_ms: int) -> None:
        """Rewrite the worker's lease from memory (all of it: Redis may have lost it)."""
        pipe = self.client.pipeline()
        pipe.set(alive_key(worker), 1, px=lease_ms)
        pipe.sadd(WORKERS, worker)
        pipe.delete(held_key(worker))
        if held:
            pipe.hset(held_key(worker), mapping=_fields(held))
        pipe.execute()

    def retire(self, worker: str, held: Mapping[str, str]) -> None:
        """A worker stopping warm: what it still holds went back to the queue (kombu and
        RabbitMQ both return a closing consumer's unstarted messages), so it is queued."""
        pipe = self.client.pipeline()
        if held:
            pipe.hset(QUEUED, mapping=_fields(held))
        pipe.delete(held_key(worker), alive_key(worker))
        pipe.srem(WORKERS, worker)
        pipe.execute()

    def forget(self, worker: str) -> None:
        pipe = self.client.pipeline()
        pipe.delete(held_key(worker), alive_key(worker))
        pipe.srem(WORKERS, worker)
        pipe.execute()

    def look(self) -> Coverage:
        """One look at every queued and held ticket."""
        workers = sorted(_text(w) for w in self.client.smembers(WORKERS))
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(QUEUED)
        for worker in workers:
            pipe.exists(alive_key(worker))
            pipe.hgetall(held_key(worker))
        results = pipe.execute()
        coverage = Coverage()
        for cover in results[0].values():
            coverage.add(_text(cover))
        for index, worker in enumerate(workers):
            alive, held = results[1 + 2 * index], results[2 + 2 * index]
            tickets = {_text(t): _text(c) for t, c in held.items()}
            if alive:
                for cover in tickets.values():
                    coverage.add(cover)
            else:
                coverage.dead[worker] = tickets
        return coverage

    def queued(self) -> dict[str, str]:
        found: dict[Any, Any] = self.client.hgetall(QUEUED)
        return {_text(t): _text(c) for t, c in found.items()}

    def count_requeues(self, prompt_ids: Sequence[int]) -> list[int]:
        pipe = self.client.pipeline()
        for pid in prompt_ids:
            pipe.hincrby(REQUEUES, str(pid), 1)
        pipe.expire(REQUEUES, REQUEUES_TTL_S)
        return [int(n) for n in pipe.execute()[:-1]]

    def lock(self, owner: str, ttl_s: float) -> bool:
        return bool(self.client.set(SWEEP_LOCK, owner, nx=True, px=int(ttl_s * 1000)))

    def unlock(self, owner: str) -> None:
        self._release_lock(keys=[SWEEP_LOCK], args=[owner])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(mapping: Mapping[str, str]) -> dict[Any, Any]:
    """redis-py's stubs want a mapping of its own key union (dicts are invariant)."""
    return dict(mapping)


# --- the publishing side (any process that sends messages) ------------------------------


@lru_cache(maxsize=4)
def _store_for(url: str, pid: int) -> LeaseStore:
    return LeaseStore.from_url(url)


def publisher_store() -> LeaseStore | None:
    """This process's lease store, or None without Redis or with recovery turned off."""
    settings = get_settings()
    if not settings.redis_url or not settings.recovery.enabled:
        return None
    return _store_for(settings.redis_url, os.getpid())


def record_publish(
    sender: str | None = None,
    body: Any = None,
    headers: Mapping[str, Any] | None = None,
    **_: Any,
) -> None:
    """`after_task_publish`: the message is in the broker, so its ticket is queued."""
    if not headers or not isinstance(body, (tuple, list)):
        return
    cover = cover_of(str(headers.get("task") or sender), body[0])
    store = publisher_store() if cover else None
    if store is None or cover is None:
        return
    try:
        store.queue(ticket_of(headers), cover)
    except RedisError as exc:  # the sweeper may re-send it after a lease: a duplicate
        log.warning("could not record message %s as queued: %s", headers.get("id"), exc)


# --- the worker side ---------------------------------------------------------------------


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Holder:
    """One worker's leases: the tickets it holds (in memory, the truth while it lives) and
    the heartbeat thread that keeps them in Redis."""

    def __init__(self, store: LeaseStore, config: RecoveryConfig, worker: str) -> None:
        self.store, self.config, self.worker = store, config, worker
        self.held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lease_ms = int(config.lease_s * 1000)
        self._thread = threading.Thread(target=self._beat, name="distillery-leases", daemon=True)
        self._thread.start()

    def take(self, ticket: str, cover: str) -> None:
        with self._lock:
            self.held[ticket] = cover
            self._safely(self.store.take, self.worker, ticket, cover, self._lease_ms)

    def release(self, ticket: str) -> None:
        with self._lock:
            if self.held.pop(ticket, None) is not None:
                self._safely(self.store.release, self.worker, ticket)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            self._safely(self.store.retire, self.worker, dict(self.held))
            self.held.clear()

    def _beat(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            with self._lock:
                self._safely(self.store.beat, self.worker, dict(self.held), self._lease_ms)

    def _safely(self, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except RedisError as exc:  # the next heartbeat rewrites the whole lease
            log.warning("lease bookkeeping failed (%s); the next heartbeat repairs it", exc)
