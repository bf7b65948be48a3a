"""workers.retry: retries until success, each failure reported, Retry-After honoured and
capped, and giving up after the last retry or on a failure that is not retryable."""

import asyncio
from typing import Any

import pytest

from workers.chat import CallError
from workers.retry import RetryPolicy, call_with_retries


def failing(n: int, **kw: object) -> object:
    calls = {"n": 0}

    async def call() -> str:
        calls["n"] += 1
        if calls["n"] <= n:
            raise CallError("boom", status="error", latency_ms=1.0, **kw)  # type: ignore[arg-type]
        return "ok"

    return call


def recording(sleeps: list[float]) -> Any:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return sleep


def retried(call: Any, policy: RetryPolicy, **kw: Any) -> Any:
    kw.setdefault("sleep", recording([]))
    return asyncio.run(call_with_retries(call, policy, **kw))


def test_retries_until_success_and_reports_each_failure() -> None:
    failures: list[CallError] = []
    sleeps: list[float] = []
    result = retried(
        failing(3),
        RetryPolicy(max_retries=5, base_s=0.1),
        on_failure=failures.append,
        sleep=recording(sleeps),
    )
    assert result == "ok" and len(failures) == 3 and len(sleeps) == 3


def test_retry_after_is_honoured_and_capped() -> None:
    sleeps: list[float] = []
    result = retried(
        failing(2, retry_after=7.0),
        RetryPolicy(max_retries=3, base_s=0.1, max_s=5.0),
        on_failure=lambda e: None,
        sleep=recording(sleeps),
    )
    assert result == "ok" and len(sleeps) == 2  # one wait after each failure
    assert all(5.0 <= s <= 5.1 for s in sleeps)


def test_gives_up_after_last_retry_and_on_non_retryable() -> None:
    failures: list[CallError] = []
    with pytest.raises(CallError):
        retried(failing(9), RetryPolicy(max_retries=2), on_failure=failures.append)
    assert len(failures) == 3  # the first call and its two retries, then no more
    seen: list[CallError] = []
    with pytest.raises(CallError):
        retried(failing(1, retryable=False), RetryPolicy(max_retries=5), on_failure=seen.append)
    assert len(seen) == 1
