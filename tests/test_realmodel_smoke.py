"""A real model end to end: SmolLM2-135M-Instruct behind llama-cpp-python's OpenAI-compatible
server answers a chat completion with real per-token logprobs."""

import math

import openai
import pytest

from tests.helpers.realmodel import MODEL_ALIAS, llama_server, require_real_model
from workers.confidence import geometric_mean


@pytest.mark.slow
def test_real_model_answers_with_real_logprobs() -> None:
    require_real_model()
    with llama_server() as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=120, max_retries=0)
        assert MODEL_ALIAS in [model.id for model in client.models.list().data]

        response = client.chat.completions.create(
            model=MODEL_ALIAS,
            messages=[
                {"role": "system", "content": "Answer in one short sentence."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            max_tokens=32,
            temperature=0,
            logprobs=True,
            top_logprobs=2,  # llama-cpp-python returns no logprobs without top_logprobs
        )

    choice = response.choices[0]
    assert choice.message.content and choice.message.content.strip()
    assert "paris" in choice.message.content.lower()
    assert response.usage is not None
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 32

    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    logprobs = [token.logprob for token in tokens]
    assert all(isinstance(lp, float) and math.isfinite(lp) and lp <= 0.0 for lp in logprobs)
    # One logprob per generated token (the end-of-turn token is neither counted nor scored).
    assert abs(len(logprobs) - response.usage.completion_tokens) <= 1
    assert "".join(token.token for token in tokens).strip() in choice.message.content
    for token in tokens:
        # top_logprobs=2 alternatives, plus the sampled token itself when it is not among them.
        assert 1 <= len(token.top_logprobs) <= 3
        assert all(alt.logprob <= 0.0 for alt in token.top_logprobs)
        # Greedy decoding: the chosen token is the most likely one.
        assert token.logprob >= max(alt.logprob for alt in token.top_logprobs) - 1e-4

    confidence = geometric_mean(logprobs)
    assert 0.0 < confidence <= 1.0
    assert confidence == pytest.approx(math.exp(sum(logprobs) / len(logprobs)))
