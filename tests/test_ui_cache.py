"""The dashboard's per-job cache (producer/ui/cache.py): a version computed once, an older
version shown while the new one is computed in the background, and nothing at all computed
twice at once."""

import threading
import time
from typing import Any

import pytest

from producer.ui import cache
from producer.ui.cache import JobCache


def counter() -> Any:
    calls: list[int] = []

    def compute() -> int:
        calls.append(len(calls))
        return len(calls)

    return calls, compute


def settle(jobs: JobCache) -> None:
    """Until no computation is in progress (bounded: 30 s)."""
    for _ in range(3000):
        if not jobs._busy:
            return
        time.sleep(0.01)
    raise AssertionError("a background computation never finished")


def test_a_version_is_computed_once() -> None:
    calls, compute = counter()
    jobs = JobCache()
    assert jobs.get("job", 1, compute).value == 1
    assert jobs.get("job", 1, compute).value == 1
    assert calls == [0]


def test_a_new_version_is_computed_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MIN_AGE_S", 0.0)  # no minimum age: recompute at once
    _, compute = counter()
    jobs = JobCache()
    jobs.get("job", 1, compute)
    release = threading.Event()

    def slow() -> str:
        release.wait(30)
        return "new"

    stale = jobs.peek("job", 2, slow)
    assert stale is not None and stale.value == 1  # the old figures, at once
    again = jobs.peek("job", 2, slow)  # already being computed: not started twice
    assert again is not None and again.value == 1
    release.set()
    settle(jobs)
    assert jobs.peek("job", 2, compute).value == "new"  # type: ignore[union-attr]


def test_nothing_yet_is_started_only_when_asked() -> None:
    calls, compute = counter()
    jobs = JobCache()
    assert jobs.peek("cost", 1, compute) is None
    assert calls == []
    assert jobs.peek("cost", 1, compute, start_if_missing=True) is None
    settle(jobs)
    assert calls == [0]
    assert jobs.peek("cost", 1, compute).value == 1  # type: ignore[union-attr]


def test_a_failed_background_computation_keeps_the_old_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cache, "MIN_AGE_S", 0.0)
    jobs = JobCache()
    jobs.get("job", 1, lambda: "old")

    def broken() -> str:
        raise RuntimeError("the database went away")

    assert jobs.peek("job", 2, broken).value == "old"  # type: ignore[union-attr]
    settle(jobs)
    entry = jobs.peek("job", 2, lambda: "new")
    assert entry is not None and entry.value == "old"  # still shown; retried in the background
    settle(jobs)
    assert jobs.peek("job", 2, lambda: "newer").value == "new"  # type: ignore[union-attr]
