"""The gateway under the tiers' shared limits and its own: a tier that would keep a request
waiting past `max_queue_s` is skipped for the next tier up (reason rate_limited), a 429
storm on the cheap tier does the same for every request while its cooldown lasts, no tier
left is a 429 with Retry-After, and a process at `max_concurrency` answers 503 at once."""

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlmodel import Session, select

from models import Attempt, Fallback, FallbackReason, Prompt, PromptStatus
from simulator import RunningSimulator
from tests.helpers.gateway import GatewayProcess, ledger_rows
from tests.helpers.routing import route_config
from tests.helpers.services import make_engine
from tests.helpers.workers import wait_until

EASY = [{"role": "user", "content": "[easy] What is the capital of France?"}]  # routed: small


def gateway_with(
    tmp_path: Path, sim: RunningSimulator, database_url: str, gateway: str, **tier: Any
) -> GatewayProcess:
    make_engine(database_url)
    config = route_config(tmp_path, sim, database_url, **tier)
    with config.open("a") as f:
        f.write(f"\n[gateway]\n{gateway}\n")
    return GatewayProcess(config, tmp_path / "gateway.log")


@pytest.fixture
def paced(
    tmp_path: Path, tiered_sim: RunningSimulator, database_url: str, clean_redis: Any
) -> Iterator[GatewayProcess]:
    """Every tier at 1 request a minute (one call, then 60 s of pacing); 1 s of queue."""
    process = gateway_with(tmp_path, tiered_sim, database_url, "max_queue_s = 1", rpm=1)
    yield process
    process.stop()


def test_a_full_tier_sends_the_request_up(paced: GatewayProcess, database_url: str) -> None:
    engine = make_engine(database_url)
    client = paced.client()
    first = client.chat.completions.with_raw_response.create(model="route", messages=EASY)
    assert first.headers["x-distillery-tier"] == "small"
    second = client.chat.completions.with_raw_response.create(model="route", messages=EASY)
    assert (second.headers["x-distillery-routed-tier"], second.headers["x-distillery-tier"]) == (
        "small",
        "frontier",
    )
    prompt_id = int(second.headers["x-distillery-prompt-id"])
    [fallback] = ledger_rows(engine, Fallback, prompt_id)
    assert (fallback.from_tier, fallback.to_tier, fallback.reason) == (
        "small",
        "frontier",
        FallbackReason.RATE_LIMITED,
    )
    # The small tier was never called for it: no attempt, only the frontier's.
    assert [a.tier for a in ledger_rows(engine, Attempt, prompt_id)] == ["frontier"]


def test_no_tier_left_is_429_with_retry_after(paced: GatewayProcess, database_url: str) -> None:
    engine = make_engine(database_url)
    client = paced.client()
    client.chat.completions.create(model="small", messages=EASY)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="small", messages=EASY)
    error = limited.value
    assert error.code == "rate_limit_exceeded"
    assert 1 < int(error.response.headers["retry-after"]) <= 61
    prompt_id = int(error.response.headers["x-distillery-prompt-id"])
    with Session(engine) as session:
        prompt = session.get(Prompt, prompt_id)
    assert prompt is not None and prompt.status == PromptStatus.FAILED
    assert "max_queue_s" in (prompt.error or "")


def test_a_429_storm_on_the_cheap_tier(
    tmp_path: Path, tiered_sim: RunningSimulator, database_url: str, clean_redis: Any
) -> None:
    """The small model answers 429 with Retry-After 30: the request goes up instead of
    waiting, and while the shared cooldown lasts no request calls the small tier at all."""
    engine = make_engine(database_url)
    process = gateway_with(tmp_path, tiered_sim, database_url, "max_queue_s = 2")
    try:
        tiered_sim.fail_next(20, status=429, retry_after=30, model="sim-small")
        client = process.client()
        tiers = [
            client.chat.completions.with_raw_response.create(model="route", messages=EASY).headers[
                "x-distillery-tier"
            ]
            for _ in range(5)
        ]
    finally:
        process.stop()
    assert tiers == ["frontier"] * 5
    assert tiered_sim.stats()["by_model"]["sim-small"] == {"requests": 1, "429": 1}
    with Session(engine) as session:
        fallbacks = session.exec(select(Fallback)).all()
    assert [f.reason for f in fallbacks] == [FallbackReason.RATE_LIMITED] * 5


def test_overload_is_503_at_once(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, clean_redis: Any
) -> None:
    engine = make_engine(sqlite_url)
    process = gateway_with(tmp_path, tiered_sim, sqlite_url, "max_concurrency = 1")
    tiered_sim.configure("sim-small", latency_ms=3000)
    client = process.client()
    slow: list[Any] = []
    first = threading.Thread(
        target=lambda: slow.append(client.chat.completions.create(model="small", messages=EASY))
    )
    try:
        first.start()

        def admitted() -> bool:
            with Session(engine) as session:
                return session.exec(select(Prompt)).first() is not None

        wait_until(admitted, timeout=60, what="the first request in flight", logs=process.log)
        with pytest.raises(openai.APIStatusError) as overloaded:
            client.chat.completions.create(model="medium", messages=EASY)
        assert overloaded.value.status_code == 503 and overloaded.value.code == "overloaded"
        assert overloaded.value.response.headers["retry-after"] == "1"
        first.join(timeout=60)
        assert slow and slow[0].choices[0].message.content
        client.chat.completions.create(model="medium", messages=EASY)  # room again
    finally:
        process.stop()
