"""The job page's aggregates, kept per job and version: they take a few scans and sorts of
the job's rows (about 4 s for 100,000 prompts on a loaded SQLite), while the job row that
says whether they changed is one primary-key read.

A job's version is its row's counters and status: a finished job's never changes, so its
page is computed once. A running job's changes with every answer; its page is recomputed at
most once per `max(MIN_AGE_S, 2 * the last computation's time)`, and while one thread
recomputes it, the others serve the previous result (the page says as of when). So a live
refresh every 2 s of a big running job costs the database one computation at a time, not
one per open tab."""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

MIN_AGE_S = 2.0
MAX_JOBS = 64


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

    def get(self, job_id: Hashable, version: Hashable, compute: Callable[[], Any]) -> Entry:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None and self._usable(job_id, entry, version):
                self._entries.move_to_end(job_id)
                return entry
            self._busy.add(job_id)
        try:
            started = time.perf_counter()
            value = compute()
            entry = Entry(version, value, time.time(), time.perf_counter() - started)
        finally:
            with self._lock:
                self._busy.discard(job_id)
        with self._lock:
            self._entries[job_id] = entry
            self._entries.move_to_end(job_id)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return entry

    def _usable(self, job_id: Hashable, entry: Entry, version: Hashable) -> bool:
        if entry.version == version:
            return True
        if job_id in self._busy:  # another thread is recomputing it: the last one will do
            return True
        return time.time() - entry.computed_at < max(MIN_AGE_S, 2 * entry.took_s)
