"""The sweeper: every worker runs one; one at a time (a Redis lock) it compares what the
ledger says is left to do with what the leases say is queued or held by a live worker, and
re-sends what nobody holds — with the code `distillery resume` runs (workers.dispatch).

Work nobody holds: prompts of a dead worker's messages (kill -9, OOM), prompts whose
messages Redis lost (FLUSHALL, a restart without persistence), a follow-up never sent
(a route step's answer message, an escalation, a finished job's reducer) because a worker
died between its commit and the send.

What a dead worker held (its alive key expired: silent for a whole lease) is re-sent at
once. Anything else is re-sent only if it was unheld at two looks a lease period apart:
long enough for the live workers to rewrite leases Redis lost (after a flush no worker is
known to be dead: the list of workers went too), and for a message between its publish
and its ticket. A prompt re-sent `max_requeues` times is left for a human.

On RabbitMQ (amqp://) the broker itself redelivers a dead consumer's messages at once, so
a dead worker's tickets count as queued again instead of being re-sent.
"""

import logging
import random
import threading
import uuid
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy.engine import Engine

from models.work import OpenWork, open_work
from workers.app import CONTROL_QUEUE, REDUCE_TASK
from workers.dispatch import send_unfinished
from workers.leases import Coverage, LeaseStore
from workers.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Orphans:
    """Work the ledger wants and no lease covers, at one look."""

    prompts: dict[int, set[int]]  # by job
    reduces: set[int]
    dead: dict[str, dict[str, str]]  # dead workers' tickets
    # What of the above only dead workers' tickets named (never on RabbitMQ, which
    # redelivers those messages itself).
    dead_held: Coverage = field(default_factory=Coverage)

    def __and__(self, later: "Orphans") -> "Orphans":
        dead = {w: t for w, t in later.dead.items() if w in self.dead}
        return Orphans(_meet(self.prompts, later.prompts), self.reduces & later.reduces, dead)

    def held_by_dead(self) -> "Orphans":
        """The part a dead worker held: its silence already lasted a whole lease."""
        prompts = _meet(self.prompts, {job: self.dead_held.prompts for job in self.prompts})
        return Orphans(prompts, self.reduces & self.dead_held.reduces, self.dead)

    def __sub__(self, done: "Orphans") -> "Orphans":
        prompts = {job: ids - done.prompts.get(job, set()) for job, ids in self.prompts.items()}
        left = {job: ids for job, ids in prompts.items() if ids}
        return Orphans(left, self.reduces - done.reduces, {})

    def __or__(self, other: "Orphans") -> "Orphans":
        prompts = {job: set(ids) for job, ids in self.prompts.items()}
        for job, ids in other.prompts.items():
            prompts.setdefault(job, set()).update(ids)
        return Orphans(prompts, self.reduces | other.reduces, {**self.dead, **other.dead})

    @property
    def empty(self) -> bool:
        return not (self.prompts or self.reduces or self.dead)


def _meet(a: dict[int, set[int]], b: dict[int, set[int]]) -> dict[int, set[int]]:
    both = {job: ids & b[job] for job, ids in a.items() if job in b}
    return {job: ids for job, ids in both.items() if ids}


def broker_redelivers(broker_url: str) -> bool:
    """RabbitMQ returns a dead consumer's unacknowledged messages to their queue at once."""
    return broker_url.split(":", 1)[0] in ("amqp", "amqps", "pyamqp")


def orphans(work: OpenWork, coverage: Coverage, *, redelivered: bool) -> Orphans:
    dead_held = Coverage()
    for tickets in coverage.dead.values():
        for cover in tickets.values():
            # On RabbitMQ the broker gave the dead workers' messages back: they are queued.
            (coverage if redelivered else dead_held).add(cover)
    prompts = {
        job: ids - coverage.prompts for job, ids in work.prompts.items() if ids - coverage.prompts
    }
    return Orphans(prompts, work.unreduced - coverage.reduces, coverage.dead, dead_held)


class Sweeper:
    def __init__(self, *, store: LeaseStore, engine: Engine, app: Celery, settings: Settings):
        self.store, self.engine, self.app, self.settings = store, engine, app, settings
        self.config = settings.recovery
        self.redelivered = broker_redelivers(settings.broker_url)
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="distillery-sweeper", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        # Spread the workers' looks, so a dead sweeper's turn is taken soon by another.
        while not self._stop.wait(self.config.sweep_s * random.uniform(0.5, 1.0)):
            try:
                self.sweep_if_first()
            except Exception:  # the database or Redis is away: look again next time
                log.warning("sweep failed; trying again in %.0f s", self.config.sweep_s)
                log.debug("sweep failure", exc_info=True)

    def sweep_if_first(self) -> bool:
        ttl = self.config.sweep_s + 3 * self.config.lease_s
        if not self.store.lock(self.owner, ttl):
            return False
        try:
            self.sweep()
        finally:
            self.store.unlock(self.owner)
        return True

    def look(self) -> Orphans:
        # The ledger first: a prompt that ends between the two reads looks unheld once,
        # and the second look (it is terminal by then) drops it.
        with self.engine.connect() as conn:
            work = open_work(conn=conn)
        return orphans(work, self.store.look(), redelivered=self.redelivered)

    def sweep(self) -> Orphans:
        """Re-send what a dead worker held at once (it has been silent for a lease), and
        what was unheld at two looks a lease apart; return what was re-sent."""
        first = self.look()
        if first.empty:
            self._collect_stale_tickets()
            return first
        now = first.held_by_dead()
        self._resend_all(now)
        rest = first - now
        if rest.empty or self._stop.wait(self.config.lease_s):
            return now
        later = rest & self.look()
        self._resend_all(later)
        return now | later

    def _resend_all(self, found: Orphans) -> None:
        self._bury(found.dead)
        for job_id, prompt_ids in found.prompts.items():
            self._resend(job_id, prompt_ids)
        for job_id in sorted(found.reduces):
            log.warning("job %s finished and nobody holds its reducer: sending it", job_id)
            self.app.send_task(REDUCE_TASK, (job_id,), queue=CONTROL_QUEUE)

    def _bury(self, dead: dict[str, dict[str, str]]) -> None:
        for worker, tickets in dead.items():
            log.warning("worker %s stopped renewing its lease (%d messages)", worker, len(tickets))
            if self.redelivered:
                self.store.queue_many(tickets)
            self.store.forget(worker)

    def _resend(self, job_id: int, prompt_ids: set[int]) -> None:
        ids = sorted(prompt_ids)
        counts = self.store.count_requeues(ids)
        allowed = {pid for pid, n in zip(ids, counts, strict=True) if n <= self.config.max_requeues}
        if len(allowed) < len(ids):
            log.error(
                "job %s: %d prompts were re-sent %d times already and are left for "
                "`distillery resume %s`",
                job_id,
                len(ids) - len(allowed),
                self.config.max_requeues,
                job_id,
            )
        if not allowed:
            return
        sent, _ = send_unfinished(
            self.app, self.engine, job_id, batch=self.settings.enqueue_batch, only=allowed
        )
        log.warning("job %s: re-sent %d prompts that no live worker held", job_id, sent)

    def _collect_stale_tickets(self) -> None:
        """Drop queued tickets whose work is all done (a ticket can outlive its message:
        a redelivered message taken before its dead holder was buried). The tickets
        first: a job submitted in between has its prompts in the ledger by then."""
        queued = self.store.queued()
        with self.engine.connect() as conn:
            work = open_work(conn=conn)
        pending = set().union(*work.prompts.values()) if work.prompts else set()
        stale = []
        for ticket, cover in queued.items():
            single = Coverage()
            single.add(cover)
            if not (single.prompts & pending or single.reduces & work.unreduced):
                stale.append(ticket)
        self.store.drop_queued(stale)
