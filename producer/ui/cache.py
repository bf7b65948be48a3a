"""The job page's aggregates, kept per job and version: they take a few scans and sorts of
the job's rows (about 4 s for 100,000 prompts on a loaded SQLite), while the job row that
says whether they changed is one primary-key read.

A job's version is its row's counters and status: a finished job's never changes, so its
page is computed once. A running job's changes with every answer; its page is recomputed at
most once per `max(MIN_AGE_S, 2 * the last computation's time)`, and while one thread
recomputes it, the others serve the previous result (the page says as of when). So a live
refresh every 2 s of a big running job costs the database one computation at a time, not
one per open tab.

A page never waits for a recomputation: it shows the previous result while a background
thread computes the new one. Only a job never computed before makes someone wait — the
job page then loads at once with its counters and fetches its aggregates as a fragment."""

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

MIN_AGE_S = 2.0
MAX_JOBS = 64
BACKGROUND = 2
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    version: Hashable
    value: Any
    computed_at: float  # time.time(), shown on the page
    took_s: float


class JobCache:
    def __init__(self, max_jobs: int = MAX_JOBS) -> None:
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._busy: set[Hashable] = set()
        self._lock = threading.Lock()
        self._max = max_jobs
        # At most BACKGROUND computations at a time, however many jobs a list shows: the
        # rest wait their turn instead of taking every database connection at once.
        self._pool = ThreadPoolExecutor(BACKGROUND, thread_name_prefix="ui-cache")

    def get(self, key: Hashable, version: Hashable, compute: Callable[[], Any]) -> Entry:
        """The entry for `version` (or a recent or in-progress one's predecessor), computed
        here if there is none at all."""
        entry = self.peek(key, version, compute)
        return entry if entry is not None else self._compute(key, version, compute)

    def peek(
        self,
        key: Hashable,
        version: Hashable,
        compute: Callable[[], Any],
        *,
        start_if_missing: bool = False,
    ) -> Entry | None:
        """What is there without waiting: the entry (perhaps of an older version, which is
        then recomputed in a background thread), or None: nothing computed yet (started in
        the background too with `start_if_missing`)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._usable(key, entry, version):
                return entry
            if entry is None and (not start_if_missing or key in self._busy):
                return None
            self._busy.add(key)
        self._pool.submit(self._compute_quietly, key, version, compute)
        return entry

    def _compute_quietly(
        self, key: Hashable, version: Hashable, compute: Callable[[], Any]
    ) -> None:
        """In the background: a failure (the database gone) leaves the old entry, and the
        next page that asks tries again."""
        try:
            self._compute(key, version, compute)
        except Exception as exc:
            log.warning("ui: could not compute %s: %s: %s", key, type(exc).__name__, exc)

    def _compute(self, key: Hashable, version: Hashable, compute: Callable[[], Any]) -> Entry:
        started = time.perf_counter()
        try:
            value = compute()
        except BaseException:
            with self._lock:
                self._busy.discard(key)
            raise
        entry = Entry(version, value, time.time(), time.perf_counter() - started)
        with self._lock:  # stored and no longer busy in one step: never seen half-done
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
            self._busy.discard(key)
        return entry

    def _usable(self, key: Hashable, entry: Entry, version: Hashable) -> bool:
        if entry.version == version:
            return True
        if key in self._busy:  # another thread is recomputing it: the last one will do
            return True
        return time.time() - entry.computed_at < max(MIN_AGE_S, 2 * entry.took_s)
