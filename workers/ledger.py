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
import queue
import threading
from concurrent.futures import Future

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from models.live import Admission, AdmitRow, admit_prompts
from models.outcomes import Record, write_records

log = logging.getLogger(__name__)

# Bounds a transaction (and its IN lists); groups are this large only after a stall.
MAX_GROUP = 500

# A step's record, or a live request's prompt row to admit (the gateway's first write).
Pending = tuple[Record, "Future[Record]"] | tuple[AdmitRow, "Future[Admission]"]
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
            for _, future in group:  # and each task retries its message (Celery autoretry)
                future.set_exception(exc)
        except Exception as exc:
            if len(group) == 1:
                item = group[0][0]
                what = f"prompt {item.prompt_id}" if isinstance(item, Record) else "a request"
                log.error("could not record %s: %s", what, exc)
                group[0][1].set_exception(exc)
                return
            for pending in group:  # one bad record must not fail the others with it
                self._write([pending])
        else:
            admissions = iter(admitted)
            for item, future in group:
                result = next(admissions) if isinstance(item, AdmitRow) else item
                future.set_result(result)  # type: ignore[arg-type]
