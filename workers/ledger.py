"""The worker's ledger writer: one thread per worker process that commits what the calls
produce in groups (a group commit).

A finished call hands its `Record` to `submit` and goes on; the writer takes everything
queued, writes it in one transaction (`models.outcomes.write_records`) and resolves each
record's future once it is committed. Under load a group holds dozens of records, so the
ledger costs a few statements per group instead of several per prompt, and SQLite sees
one writer per process instead of one per call in flight. A task waits for its records'
futures before it returns, so a message is acknowledged only after its work is durable.
"""

import logging
import os
import queue
import threading
from concurrent.futures import Future

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from models import get_write_engine
from models.outcomes import Record, Written, write_records

log = logging.getLogger(__name__)

# Bounds a transaction (and its IN lists); groups are this large only after a stall.
MAX_GROUP = 500

Pending = tuple[Record, "Future[Written]"]


class LedgerWriter:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: queue.SimpleQueue[Pending] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="distillery-ledger", daemon=True)
        self.thread.start()

    def submit(self, record: Record) -> "Future[Written]":
        future: Future[Written] = Future()
        self.queue.put((record, future))
        return future

    def _run(self) -> None:
        while True:
            group = [self.queue.get()]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            self._write(group)

    def _write(self, group: list[Pending]) -> None:
        try:
            with self.engine.begin() as conn:
                written = write_records(conn, [record for record, _ in group])
        except OperationalError as exc:  # the database is down or locked: all fail alike,
            for _, future in group:  # and each task retries its message (Celery autoretry)
                future.set_exception(exc)
        except Exception as exc:
            if len(group) == 1:
                log.error("could not record prompt %s: %s", group[0][0].prompt_id, exc)
                group[0][1].set_exception(exc)
                return
            for pending in group:  # one bad record must not fail the others with it
                self._write([pending])
        else:
            for (_, future), result in zip(group, written, strict=True):
                future.set_result(result)


_writers: dict[tuple[int, str], LedgerWriter] = {}
_lock = threading.Lock()


def ledger_for(database_url: str) -> LedgerWriter:
    """This process's writer for `database_url`."""
    key = (os.getpid(), database_url)
    with _lock:
        if key not in _writers:
            _writers[key] = LedgerWriter(get_write_engine(database_url))
        return _writers[key]
