"""`[gateway] stream_holdback_tokens`: the hold-back cascade on a tier's first N tokens,
streamed from the tier. Real gateway process, the simulator streaming over HTTP (paced by
its `tokens_per_s`), real Redis, SQLite and PostgreSQL, the `openai` SDK as the client:
an escalation after N tokens is invisible (the stream is exactly the final tier's answer),
the decision is the confidence code's on exactly those N tokens, a kept answer streams
before it is finished, a tier failing after its tokens were sent ends the stream with an
error (recorded), and a client leaving mid-stream cuts the upstream call (recorded)."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from sqlmodel import Session

from models import Attempt, AttemptStatus, Fallback, Prompt, PromptStatus
from simulator import RunningSimulator
from tests.helpers.config import TIERS
from tests.helpers.gateway import GatewayProcess, ledger_rows, streamed_text
from tests.helpers.routing import CASES, route_config
from tests.helpers.services import make_engine
from tests.helpers.workers import wait_until
from workers.confidence import geometric_mean
from workers.live import DISCONNECTED_DURING

HOLD = 8


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def serving(
    tmp_path: Path, sim: RunningSimulator, database_url: str, tokens_per_s: float
) -> Iterator[GatewayProcess]:
    """A gateway holding back HOLD tokens, its tiers streaming at `tokens_per_s`."""
    for tier in TIERS:
        sim.configure(f"sim-{tier}", tokens_per_s=tokens_per_s)
    make_engine(database_url)
    config = route_config(tmp_path, sim, database_url)
    with config.open("a") as file:
        file.write(f"\n[gateway]\nstream_holdback_tokens = {HOLD}\n")
    process = GatewayProcess(config, tmp_path / "gateway.log")
    yield process
    process.stop()


@pytest.fixture
def gateway(
    tmp_path: Path, tiered_sim: RunningSimulator, database_url: str, clean_redis: Any
) -> Iterator[GatewayProcess]:
    yield from serving(tmp_path, tiered_sim, database_url, 2000)


@pytest.fixture
def slow_gateway(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, clean_redis: Any
) -> Iterator[GatewayProcess]:
    """Tokens 50 ms apart: a 40-120 token answer streams for seconds after its release."""
    yield from serving(tmp_path, tiered_sim, sqlite_url, 20)


def prompt_row(engine: Any, prompt_id: int) -> Prompt:
    with Session(engine) as session:
        prompt = session.get(Prompt, prompt_id)
    assert prompt is not None
    return prompt


def direct_logprobs(sim: RunningSimulator, tier: str, text: str) -> tuple[str, list[float]]:
    """The tier's own answer and token logprobs, asked of the simulator directly."""
    client = OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    answer = client.chat.completions.create(
        model=f"sim-{tier}", messages=user(text), logprobs=True
    ).choices[0]
    assert answer.logprobs is not None and answer.logprobs.content
    return answer.message.content or "", [t.logprob for t in answer.logprobs.content]


def test_escalation_after_the_held_tokens_is_invisible(
    gateway: GatewayProcess, tiered_sim: RunningSimulator, database_url: str
) -> None:
    engine = make_engine(database_url)
    client = gateway.client()
    for text, routed, final in CASES:
        raw = client.chat.completions.with_raw_response.create(
            model="route", messages=user(text), stream=True
        )
        streamed = streamed_text(raw, routed, final)
        # Exactly the final tier's answer: no held tokens of another tier before it.
        final_answer, _ = direct_logprobs(tiered_sim, final, text)
        assert streamed == final_answer
        prompt_id = int(raw.headers["x-distillery-prompt-id"])
        prompt = prompt_row(engine, prompt_id)
        assert (prompt.status, prompt.final_tier, prompt.response) == (
            PromptStatus.SUCCEEDED,
            final,
            streamed,
        )
        attempts = ledger_rows(engine, Attempt, prompt_id)
        assert [a.tier for a in attempts] == list(dict.fromkeys([routed, final]))
        if routed == final:
            continue
        # The routed tier was decided on its first HOLD tokens, by the confidence code, and
        # its call was cut there; the escalation is recorded with that confidence.
        _, logprobs = direct_logprobs(tiered_sim, routed, text)
        cheap = attempts[0]
        assert (cheap.status, cheap.completion_tokens) == (AttemptStatus.OK, HOLD)
        assert cheap.confidence == pytest.approx(geometric_mean(logprobs[:HOLD]))
        (fallback,) = ledger_rows(engine, Fallback, prompt_id)
        assert (fallback.from_tier, fallback.to_tier, fallback.reason) == (
            routed,
            final,
            "low_confidence",
        )
        assert fallback.confidence == pytest.approx(cheap.confidence)
        assert len(logprobs) > HOLD  # the answer was longer: the rest was never sent


def test_an_escalation_hangs_up_on_the_cheap_tier(
    slow_gateway: GatewayProcess, tiered_sim: RunningSimulator
) -> None:
    """The dropped tier's generation is cut, not left running: the simulator sees its
    client hang up (499) while it still had tokens to send."""
    text, routed, final = CASES[1]
    raw = slow_gateway.client().chat.completions.with_raw_response.create(
        model="route", messages=user(text), stream=True
    )
    assert streamed_text(raw, routed, final)
    by_model = tiered_sim.stats()["by_model"]
    assert by_model[f"sim-{routed}"].get("499") == 1
    assert by_model[f"sim-{final}"] == {"requests": 1, "200": 1}


def test_a_kept_answer_streams_before_it_is_finished(
    slow_gateway: GatewayProcess, sqlite_url: str
) -> None:
    """Usage and logprobs when asked for; the first chunks arrive while the tier is still
    generating (the prompt is pending); after [DONE] the whole answer is on record."""
    engine = make_engine(sqlite_url)
    raw = slow_gateway.client().chat.completions.with_raw_response.create(
        model="small",
        messages=user("[easy] Name a colour."),
        stream=True,
        stream_options={"include_usage": True},
        logprobs=True,
    )
    prompt_id = int(raw.headers["x-distillery-prompt-id"])
    stream = iter(raw.parse())
    first = [next(stream) for _ in range(3)]
    assert prompt_row(engine, prompt_id).status == PromptStatus.PENDING
    chunks = first + list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    logprobs = [c.choices[0].logprobs for c in chunks[:-1] if c.choices[0].logprobs]
    tokens = [t for entry in logprobs for t in entry.content or []]
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert "".join(t.token for t in tokens) == text and len(tokens) == last.usage.completion_tokens
    prompt = prompt_row(engine, prompt_id)
    assert (prompt.status, prompt.response) == (PromptStatus.SUCCEEDED, text)
    (attempt,) = ledger_rows(engine, Attempt, prompt_id)
    assert (attempt.prompt_tokens, attempt.completion_tokens) == (
        last.usage.prompt_tokens,
        last.usage.completion_tokens,
    )


def test_a_tier_failing_after_its_tokens_were_sent(
    gateway: GatewayProcess, tiered_sim: RunningSimulator, database_url: str
) -> None:
    """Before the held tokens are released, a broken stream is retried unseen; after, the
    client gets the tokens sent, then an error event (the SDK raises APIError), never a
    restart on another tier; the prompt is failed with what was sent."""
    engine = make_engine(database_url)
    client = gateway.client()
    text = "[easy] What is the capital of France?"  # kept by small
    expected, _ = direct_logprobs(tiered_sim, "small", text)

    tiered_sim.fail_next(1, status=500, model="sim-small", after_tokens=HOLD - 3)
    raw = client.chat.completions.with_raw_response.create(
        model="route", messages=user(text), stream=True
    )
    unseen = "".join(c.choices[0].delta.content or "" for c in raw.parse())
    assert unseen == expected
    attempts = ledger_rows(engine, Attempt, int(raw.headers["x-distillery-prompt-id"]))
    assert [(a.tier, a.status) for a in attempts] == [
        ("small", AttemptStatus.ERROR),
        ("small", AttemptStatus.OK),
    ]

    tiered_sim.fail_next(1, status=500, model="sim-small", after_tokens=HOLD + 12)
    raw = client.chat.completions.with_raw_response.create(
        model="route", messages=user(text), stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="broke off"):
        for chunk in raw.parse():
            received.append(chunk.choices[0].delta.content or "")
    sent = "".join(received)
    assert sent and expected.startswith(sent) and sent != expected
    prompt_id = int(raw.headers["x-distillery-prompt-id"])
    prompt = prompt_row(engine, prompt_id)
    assert (prompt.status, prompt.final_tier, prompt.response) == (
        PromptStatus.FAILED,
        "small",
        sent,
    )
    assert prompt.error is not None and f"after {HOLD + 12} tokens" in prompt.error
    (attempt,) = ledger_rows(engine, Attempt, prompt_id)
    assert (attempt.tier, attempt.status, attempt.completion_tokens) == (
        "small",
        AttemptStatus.ERROR,
        HOLD + 12,
    )
    assert attempt.cost_usd > 0
    assert ledger_rows(engine, Fallback, prompt_id) == []


def test_a_client_leaving_mid_stream_cuts_the_call(
    slow_gateway: GatewayProcess, tiered_sim: RunningSimulator, sqlite_url: str
) -> None:
    engine = make_engine(sqlite_url)
    stream = slow_gateway.client().chat.completions.create(
        model="route", messages=user("[easy] What is the capital of France?"), stream=True
    )
    chunks = iter(stream)
    received = [next(chunks) for _ in range(HOLD + 2)]
    prompt_id = int(stream.response.headers["x-distillery-prompt-id"])
    stream.close()
    assert len(received) == HOLD + 2

    def failed() -> bool:
        return prompt_row(engine, prompt_id).status == PromptStatus.FAILED

    wait_until(failed, timeout=60, what="the prompt to be recorded failed", logs=slow_gateway.log)
    prompt = prompt_row(engine, prompt_id)
    assert prompt.error is not None and prompt.error.startswith(DISCONNECTED_DURING)
    (attempt,) = ledger_rows(engine, Attempt, prompt_id)
    assert (attempt.status, attempt.error) == (AttemptStatus.ERROR, prompt.error)
    assert attempt.completion_tokens >= HOLD
    wait_until(
        lambda: tiered_sim.stats()["by_model"]["sim-small"].get("499") == 1,
        timeout=30,
        what="the simulator to see its call hung up on",
    )


def test_async_streams_with_holdback(gateway: GatewayProcess, tiered_sim: RunningSimulator) -> None:
    async def run() -> list[tuple[str, str, str]]:
        client = gateway.async_client()
        try:

            async def one(text: str) -> tuple[str, str, str]:
                raw = await client.chat.completions.with_raw_response.create(
                    model="route", messages=user(text), stream=True
                )
                streamed = "".join(
                    [c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]
                )
                return text, raw.headers["x-distillery-tier"], streamed

            return await asyncio.gather(*(one(text) for text, _, _ in CASES))
        finally:
            await client.close()

    finals = {text: final for text, _, final in CASES}
    for text, tier, streamed in asyncio.run(run()):
        assert tier == finals[text]
        assert streamed == direct_logprobs(tiered_sim, tier, text)[0]
