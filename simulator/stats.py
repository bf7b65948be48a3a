"""Counters behind GET /admin/stats; thread-safe, since tests read them from another thread."""

import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any

ACCEPTED_TIMES_CAP = 200_000  # per model: hours of a load test, without unbounded memory


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._requests = 0
        self._by_status: Counter[str] = Counter()
        self._by_model: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._accepted_times: defaultdict[str, deque[float]] = defaultdict(
            lambda: deque(maxlen=ACCEPTED_TIMES_CAP)
        )
        self._tokens: Counter[str] = Counter()
        # Every answered request as (time, status, tokens): lets tests check rate windows
        # and pauses on the server's side.
        self._events: defaultdict[str, deque[tuple[float, int, int]]] = defaultdict(
            lambda: deque(maxlen=ACCEPTED_TIMES_CAP)
        )

    def reset(self) -> None:
        with self._lock:
            self._reset()

    def record(
        self, model: str | None, status: int, tokens: int = 0, arrived: float | None = None
    ) -> None:
        """`model` is None when the request was too broken to name one; `arrived` is when
        the request came in (events are stamped with it), defaulting to now."""
        now = time.time()
        with self._lock:
            self._requests += 1
            self._by_status[str(status)] += 1
            if model is None:
                return
            per_model = self._by_model[model]
            per_model["requests"] += 1
            per_model[str(status)] += 1
            self._events[model].append((arrived or now, status, tokens))
            if status == 200:
                self._accepted_times[model].append(now)
                self._tokens[model] += tokens

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": dict(self._by_status),
                "by_model": {model: dict(counts) for model, counts in self._by_model.items()},
                "accepted_times": {m: list(ts) for m, ts in self._accepted_times.items()},
                "tokens": dict(self._tokens),
                "events": {m: [list(e) for e in events] for m, events in self._events.items()},
            }
