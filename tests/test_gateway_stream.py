"""Streaming through the gateway's hold-back cascade, with the `openai` SDK's own streaming
(sync and async) as the client: an escalated answer streams only the final tier's tokens,
the stream ends with `data: [DONE]`, usage comes when asked for, and a client that leaves
while its answer is held cancels the upstream call, which is recorded."""

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from sqlmodel import Session, select

from models import Attempt, AttemptStatus, Prompt, PromptStatus
from simulator import RunningSimulator
from tests.helpers.gateway import GatewayProcess, streamed_text
from tests.helpers.routing import CASES, route_config
from tests.helpers.services import make_engine
from tests.helpers.workers import wait_until
from workers.live import DISCONNECTED


@pytest.fixture
def gateway(
    tmp_path: Path, tiered_sim: RunningSimulator, database_url: str, clean_redis: Any
) -> Iterator[GatewayProcess]:
    make_engine(database_url)
    process = GatewayProcess(
        route_config(tmp_path, tiered_sim, database_url), tmp_path / "gateway.log"
    )
    yield process
    process.stop()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_streams_only_the_final_tier(
    gateway: GatewayProcess, tiered_sim: RunningSimulator, database_url: str
) -> None:
    engine = make_engine(database_url)
    client = gateway.client()
    direct = OpenAI(base_url=tiered_sim.base_url, api_key="x", max_retries=0)
    for text, routed, final in CASES:
        raw = client.chat.completions.with_raw_response.create(
            model="route", messages=user(text), stream=True
        )
        streamed = streamed_text(raw, routed, final)
        with Session(engine) as session:
            prompt = session.get(Prompt, int(raw.headers["x-distillery-prompt-id"]))
        assert prompt is not None and prompt.response == streamed
        answers = {
            tier: direct.chat.completions.create(model=f"sim-{tier}", messages=user(text))
            .choices[0]
            .message.content
            for tier in {routed, final}
        }
        assert streamed == answers[final]
        if routed != final:  # the held-back answer never reached the client
            assert answers[routed] != streamed and answers[routed] not in streamed


def test_usage_logprobs_and_done(gateway: GatewayProcess, database_url: str) -> None:
    engine = make_engine(database_url)
    client = gateway.client()
    chunks = list(
        client.chat.completions.create(
            model="small",
            messages=user("[easy] Name a colour."),
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    tokens = [
        t
        for c in chunks[:-1]
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)
    assert "".join(t.token for t in tokens) == text and tokens
    with Session(engine) as session:
        attempt = session.exec(select(Attempt)).one()
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        attempt.prompt_tokens,
        attempt.completion_tokens,
    )
    with httpx.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        json={"model": "route", "messages": user("[easy] hi"), "stream": True},
        timeout=30,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"


def test_async_streaming(gateway: GatewayProcess) -> None:
    async def run() -> list[tuple[str, str]]:
        client = gateway.async_client()
        try:

            async def one(n: int) -> tuple[str, str]:
                raw = await client.chat.completions.with_raw_response.create(
                    model="route:rules",
                    messages=user(f"[easy] Say hi {n}."),
                    stream=True,
                )
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]
                )
                return raw.headers["x-distillery-tier"], text

            return await asyncio.gather(*(one(n) for n in range(6)))
        finally:
            await client.close()

    results = asyncio.run(run())
    assert all(tier == "small" and text.startswith("Regarding") for tier, text in results)


def test_a_client_leaving_cancels_the_call_and_is_recorded(
    gateway: GatewayProcess, tiered_sim: RunningSimulator, database_url: str
) -> None:
    """The escalated call is slow; the client hangs up while the answer is held. The
    frontier call is cancelled and the prompt is failed with the reason, its small
    attempt and escalation kept."""
    engine = make_engine(database_url)
    tiered_sim.configure("sim-frontier", latency_ms=5000)
    body = (
        b'{"model": "route", "stream": true, "messages": '
        b'[{"role": "user", "content": "[hard] What is the integral of x^x?"}]}'
    )
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )

    def attempts() -> list[Attempt]:
        with Session(engine) as session:
            return list(session.exec(select(Attempt)).all())

    sock = socket.create_connection(("127.0.0.1", gateway.port))
    try:
        sock.sendall(request)
        wait_until(lambda: len(attempts()) == 1, timeout=60, what="the small tier's answer")
        time.sleep(0.3)  # the escalated call is on its way (it takes 5 s)
    finally:
        sock.close()

    def failed() -> bool:
        with Session(engine) as session:
            prompt = session.exec(select(Prompt)).one()
        return prompt.status == PromptStatus.FAILED

    wait_until(failed, timeout=60, what="the prompt to be recorded as failed", logs=gateway.log)
    with Session(engine) as session:
        prompt = session.exec(select(Prompt)).one()
    assert prompt.error == DISCONNECTED and prompt.final_tier == "frontier" and prompt.fell_back
    assert [(a.tier, a.status, a.error) for a in attempts()] == [
        ("small", AttemptStatus.OK, None),
        ("frontier", AttemptStatus.ERROR, DISCONNECTED),
    ]
