"""The workers' client (`workers.http_client`, aiohttp) over real HTTP against the simulator:
an answer parses to the same `Completion` the openai SDK sees in the same response, and every
kind of failure is classified (status, HTTP code, whether to retry, Retry-After)."""

import socket
from collections.abc import Iterator

import openai
import pytest

from models import AttemptStatus
from simulator import RunningSimulator, SimConfig, start_in_thread
from tests.helpers.clients import CLIENTS, Call, async_call
from workers.chat import CallError, ChatRequest
from workers.settings import TierConfig

QUESTION = ChatRequest([{"role": "user", "content": "Why does bread rise?"}], temperature=0)


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    running = start_in_thread(SimConfig())
    try:
        yield running
    finally:
        running.stop()


def tier_at(url: str, model: str = "m", timeout_s: float = 10.0) -> TierConfig:
    return TierConfig(name="t", base_url=url, model=model, timeout_s=timeout_s)  # type: ignore[arg-type]


def failure(call: Call, tier: TierConfig, request: ChatRequest = QUESTION) -> CallError:
    with pytest.raises(CallError) as caught:
        call(tier, request)
    return caught.value


def test_the_client_parses_an_answer_as_the_openai_sdk_does(sim: RunningSimulator) -> None:
    # The simulator answers a temperature-0 question the same way every time, so the SDK's
    # view of one call and ours of another are of the same answer.
    request = ChatRequest(QUESTION.messages, temperature=0, max_tokens=40, logprobs=True)
    ours = async_call(tier_at(sim.base_url), request)
    sdk = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    theirs = sdk.chat.completions.create(**request.body("m"))
    choice = theirs.choices[0]
    assert ours.text == choice.message.content and ours.text
    assert choice.logprobs is not None and choice.logprobs.content
    assert ours.logprobs == [token.logprob for token in choice.logprobs.content]
    assert theirs.usage is not None
    assert (ours.prompt_tokens, ours.completion_tokens) == (
        theirs.usage.prompt_tokens,
        theirs.usage.completion_tokens,
    )
    assert ours.finish_reason == choice.finish_reason
    assert ours.latency_ms > 0


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
