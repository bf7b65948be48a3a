"""The worker's ledger writer: one thread per worker process that commits what the calls
produce in groups (a group commit).

A finished call hands its `Record` to `submit` and goes on; the writer takes everything
queued, writes it in one transaction (`models.outcomes.write_records`) and resolves each
record's future once it is committed. Under load a group holds dozens of records, so the
ledger costs a few statements per group instead of several per prompt, and SQLite sees
one writer per process instead of one per call in flight. A task waits for its records'
futures before it returns, so a message is acknowledged only after its work is durable.

The call loop's coroutines use `record` instead: an asyncio future, and the whole group's
futures of one loop resolved in one hand-over to that loop (one `call_soon_threadsafe`
per group, not a thread-safe future, a wrapper and a wake-up of the loop per record).
"""

import asyncio
import logging
import queue
import threading
from collections import defaultdict
from concurrent.futures import Future
from typing import Any, Union

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from models.live import Admission, AdmitRow, admit_prompts
from models.outcomes import Record, write_records

log = logging.getLogger(__name__)

# Bounds a transaction (and its IN lists); groups are this large only after a stall.
MAX_GROUP = 500

# What is written: a step's record, or a live request's prompt row to admit (the gateway's
# first write); and what it resolves to: the record, or the admission.
Item = Record | AdmitRow
Written = Record | Admission
# Where the outcome goes: a thread's future, or a future of the event loop given.
LoopTarget = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
Target = Union["Future[Any]", LoopTarget]
Pending = tuple[Item, Target]
_STOP = None  # queued by `close`: write what came before, then end the thread


class LedgerWriter:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="distillery-ledger", daemon=True)
        self.thread.start()

    def submit(self, record: Record) -> "Future[Record]":
        """The record's future: resolved with the record itself, marked with what it
        changed, once it is committed."""
        future: Future[Record] = Future()
        self.queue.put((record, future))
        return future

    def record(self, record: Record) -> "asyncio.Future[Record]":
        """`submit` for a coroutine of the running event loop (call it from that loop)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Record] = loop.create_future()
        self.queue.put((record, (loop, future)))
        return future

    def admit(self, row: AdmitRow) -> "Future[Admission]":
        """A live request's prompt row, inserted with the next group (`models.live`)."""
        future: Future[Admission] = Future()
        self.queue.put((row, future))
        return future

    def close(self, timeout_s: float = 30.0) -> None:
        self.queue.put(_STOP)
        self.thread.join(timeout_s)

    def _run(self) -> None:
        while (first := self.queue.get()) is not _STOP:
            group, stop = [first], False
            while len(group) < MAX_GROUP and not stop:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                stop = item is _STOP
                if item is not None:
                    group.append(item)
            self._write(group)
            if stop:
                return

    def _write(self, group: list[Pending]) -> None:
        try:
            with self.engine.begin() as conn:
                # Admissions first: a request waits for its row before its first call, so
                # no record of the same group can refer to one of them.
                admitted = admit_prompts(
                    conn=conn, rows=[i for i, _ in group if isinstance(i, AdmitRow)]
                )
                write_records(conn, [i for i, _ in group if isinstance(i, Record)])
        except OperationalError as exc:  # the database is down or locked: all fail alike,
            _settle([(target, exc) for _, target in group])  # each task retries its message
        except Exception as exc:
            if len(group) == 1:
                item = group[0][0]
                what = f"prompt {item.prompt_id}" if isinstance(item, Record) else "a request"
                log.error("could not record %s: %s", what, exc)
                _settle([(group[0][1], exc)])
                return
            for pending in group:  # one bad record must not fail the others with it
                self._write([pending])
        else:
            admissions = iter(admitted)
            written = [next(admissions) if isinstance(i, AdmitRow) else i for i, _ in group]
            _settle([(target, w) for (_, target), w in zip(group, written, strict=True)])


Outcome = Written | BaseException


def _settle(outcomes: list[tuple[Target, Outcome]]) -> None:
    """Resolve each target with its record or error: thread futures at once, each event
    loop's futures in one call on that loop."""
    by_loop: defaultdict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]]
    by_loop = defaultdict(list)
    for target, outcome in outcomes:
        if isinstance(target, tuple):
            by_loop[target[0]].append((target[1], outcome))
        elif isinstance(outcome, BaseException):
            target.set_exception(outcome)
        else:
            target.set_result(outcome)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_in_loop, settled)
        except RuntimeError:  # the loop is closed: nobody waits for these any more
            log.warning("%d records committed after their call loop closed", len(settled))


def _resolve_in_loop(settled: list[tuple["asyncio.Future[Any]", Outcome]]) -> None:
    for future, outcome in settled:
        if future.done():  # its waiter was cancelled
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
