"""The gateway with a real model as the cheap tier: SmolLM2-135M-Instruct on llama.cpp's
server as `small`, the simulator as medium and frontier, the `openai` SDK as the client.
The confidence that decides the cascade is the real model's own logprobs, and a streamed
answer is the recorded one. Slow: the real model answers in seconds."""

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from models import Attempt, Fallback, FallbackReason, Prompt
from simulator import RunningSimulator
from tests.helpers.gateway import GatewayProcess
from tests.helpers.services import make_engine
from tests.test_realmodel_route import (  # the route job's real-model setup, shared
    THRESHOLD,
    frontier_sim,
    llama_url,
    real_model_config,
)

pytestmark = pytest.mark.slow
__all__ = ["frontier_sim", "llama_url"]  # fixtures, used by name

QUESTIONS = [  # short, so the rules router sends them to small
    "What is the capital of France?",
    "Name three primary colours.",
    "What is 12 times 12?",
]


@pytest.fixture
def gateway(
    tmp_path: Path,
    llama_url: str,
    frontier_sim: RunningSimulator,
    sqlite_url: str,
    clean_redis: Any,
) -> Iterator[GatewayProcess]:
    make_engine(sqlite_url)
    config = real_model_config(
        tmp_path / "distillery.toml",
        llama_url=llama_url,
        sim_url=frontier_sim.base_url,
        database_url=sqlite_url,
    )
    process = GatewayProcess(config, tmp_path / "gateway.log")
    yield process
    process.stop()


def test_real_small_model_behind_the_gateway(gateway: GatewayProcess, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    client = gateway.client(timeout=300)
    outcomes = []
    for question in QUESTIONS:
        raw = client.chat.completions.with_raw_response.create(
            model="route",
            messages=[{"role": "user", "content": question}],
            max_tokens=16,
            temperature=0,
        )
        assert raw.headers["x-distillery-routed-tier"] == "small"
        prompt_id = int(raw.headers["x-distillery-prompt-id"])
        with Session(engine) as session:
            prompt = session.get(Prompt, prompt_id)
            attempts = session.exec(select(Attempt).where(Attempt.prompt_id == prompt_id)).all()
            fallbacks = session.exec(select(Fallback).where(Fallback.prompt_id == prompt_id)).all()
        assert prompt is not None and attempts[0].tier == "small"
        small = attempts[0]
        assert small.model == "smollm2" and small.completion_tokens > 0
        assert small.confidence is not None and 0 < small.confidence < 1
        final = raw.headers["x-distillery-tier"]
        if small.confidence >= THRESHOLD:
            assert final == "small" and not fallbacks
            assert float(raw.headers["x-distillery-confidence"]) == pytest.approx(small.confidence)
        else:
            assert final == "frontier"
            assert [(f.reason, f.confidence) for f in fallbacks] == [
                (FallbackReason.LOW_CONFIDENCE, pytest.approx(small.confidence))
            ]
        assert raw.parse().choices[0].message.content == prompt.response
        outcomes.append(final)

    # The confidence is the model's own: asked for, the logprobs come back and give it.
    answer = client.chat.completions.create(
        model="small",
        messages=[{"role": "user", "content": QUESTIONS[0]}],
        max_tokens=16,
        temperature=0,
        logprobs=True,
        top_logprobs=1,
    )
    tokens = answer.choices[0].logprobs.content
    assert tokens
    with Session(engine) as session:
        last = session.exec(select(Attempt).order_by(Attempt.id.desc())).first()  # type: ignore[union-attr]
    assert last is not None and last.tier == "small"
    expected = math.exp(sum(t.logprob for t in tokens) / len(tokens))
    assert last.confidence == pytest.approx(expected, rel=1e-6)

    # A stream from the real model is the recorded answer.
    raw = client.chat.completions.with_raw_response.create(
        model="small",
        messages=[{"role": "user", "content": QUESTIONS[1]}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    with Session(engine) as session:
        prompt = session.get(Prompt, int(raw.headers["x-distillery-prompt-id"]))
    assert prompt is not None and streamed == prompt.response and streamed
