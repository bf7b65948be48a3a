"""The two clients — `workers.client` (openai SDK, one call at a time) and `workers.aclient`
(aiohttp, the workers' bulk path) — over real HTTP against the simulator: the same answer
parses to the same `Completion`, and every kind of failure is classified the same way
(status, HTTP code, whether to retry, Retry-After)."""

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from models import AttemptStatus
from simulator import RunningSimulator, SimConfig, start_in_thread
from tests.helpers.clients import CLIENTS, Call, async_call, sync_call
from workers.completion import CallError
from workers.settings import TierConfig

QUESTION = {"messages": [{"role": "user", "content": "Why does bread rise?"}], "temperature": 0}


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    running = start_in_thread(SimConfig())
    try:
        yield running
    finally:
        running.stop()


def tier_at(url: str, model: str = "m", timeout_s: float = 10.0) -> TierConfig:
    return TierConfig(base_url=url, model=model, timeout_s=timeout_s)  # type: ignore[arg-type]


def failure(call: Call, tier: TierConfig, request: dict[str, Any] = QUESTION) -> CallError:
    with pytest.raises(CallError) as caught:
        call(tier, request)
    return caught.value


def test_both_clients_parse_an_answer_identically(sim: RunningSimulator) -> None:
    request = {**QUESTION, "logprobs": True, "top_logprobs": 0, "max_tokens": 40}
    sdk, lean = (call(tier_at(sim.base_url), request) for call in (sync_call, async_call))
    assert lean.text == sdk.text and lean.text
    assert lean.logprobs == sdk.logprobs and lean.logprobs
    assert (lean.prompt_tokens, lean.completion_tokens) == (
        sdk.prompt_tokens,
        sdk.completion_tokens,
    )
    assert lean.finish_reason == sdk.finish_reason
    assert lean.latency_ms > 0


@CLIENTS
def test_a_429_is_rate_limited_with_its_retry_after(sim: RunningSimulator, call: Call) -> None:
    sim.fail_next(1, status=429, retry_after=7)
    error = failure(call, tier_at(sim.base_url))
    assert (error.status, error.http_status, error.retry_after) == (
        AttemptStatus.RATE_LIMITED,
        429,
        7.0,
    )
    assert error.retryable and str(error).startswith("HTTP 429: ")


@CLIENTS
def test_a_server_error_is_retryable(sim: RunningSimulator, call: Call) -> None:
    sim.fail_next(1, status=503)
    error = failure(call, tier_at(sim.base_url))
    assert (error.status, error.http_status, error.retryable) == (AttemptStatus.ERROR, 503, True)


@CLIENTS
def test_a_bad_request_is_not_retried(sim: RunningSimulator, call: Call) -> None:
    sim.configure("small-context", context_tokens=5)
    error = failure(call, tier_at(sim.base_url, model="small-context"))
    assert (error.status, error.http_status, error.retryable) == (AttemptStatus.ERROR, 400, False)
    assert "HTTP 400: " in str(error) and "context" in str(error).lower()


@CLIENTS
def test_a_hung_server_is_a_timeout(sim: RunningSimulator, call: Call) -> None:
    sim.configure("hangs", timeout_rate=1.0, hang_s=5)
    error = failure(call, tier_at(sim.base_url, model="hangs", timeout_s=0.3))
    assert (error.status, error.http_status, error.retryable) == (AttemptStatus.TIMEOUT, None, True)
    assert error.latency_ms >= 250


@CLIENTS
def test_nobody_listening_is_a_connection_error(call: Call) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = failure(call, tier_at(f"http://127.0.0.1:{port}/v1"))
    assert (error.status, error.http_status, error.retryable) == (AttemptStatus.ERROR, None, True)
    assert str(error).startswith("connection failed")
