"""The model simulator, over real HTTP on loopback: no mocks."""

import asyncio
import json
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from simulator import ModelBehaviour, RunningSimulator, SimConfig, build_app, start_in_thread
from simulator.difficulty import difficulty
from simulator.tokens import count_prompt_tokens, split_tokens

BREAD: Any = [{"role": "user", "content": "how do I bake bread at home without a mixer?"}]
ROUTER_SYSTEM = {"role": "system", "content": "Rate the difficulty as EASY, MEDIUM, or HARD."}


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    config = SimConfig(
        default=ModelBehaviour(latency_ms=0),
        models={
            "gpt-small": ModelBehaviour(skill=0.3),
            "gpt-big": ModelBehaviour(skill=0.95),
        },
    )
    with start_in_thread(config) as running:
        yield running


@pytest.fixture
def client(sim: RunningSimulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


def chat(client: openai.OpenAI, content: str, model: str = "gpt-big", **kwargs: Any) -> Any:
    messages: Any = [{"role": "user", "content": content}]
    return client.chat.completions.create(model=model, messages=messages, **kwargs)


def post(sim: RunningSimulator, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{sim.url}{path}", json=body, timeout=10, **kwargs)


def post_chat(sim: RunningSimulator, body: dict[str, Any]) -> httpx.Response:
    return post(sim, "/v1/chat/completions", body)


def geometric_mean_probability(response: Any) -> float:
    logprobs = [token.logprob for token in response.choices[0].logprobs.content]
    return math.exp(sum(logprobs) / len(logprobs))


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["message"]


# --- deterministic answers --------------------------------------------------------------


def test_same_request_gets_byte_identical_content_and_logprobs(sim: RunningSimulator) -> None:
    body = {"model": "gpt-small", "messages": BREAD, "seed": 7, "logprobs": True, "top_logprobs": 3}
    first, second = post_chat(sim, body).json(), post_chat(sim, body).json()
    assert first["choices"] == second["choices"]
    assert first["usage"] == second["usage"]


def test_seed_and_model_change_the_text(client: openai.OpenAI) -> None:
    base = chat(client, BREAD[0]["content"], seed=1).choices[0].message.content
    other_seed = chat(client, BREAD[0]["content"], seed=2).choices[0].message.content
    other_model = chat(client, BREAD[0]["content"], seed=1, model="gpt-small")
    assert base != other_seed
    assert base != other_model.choices[0].message.content


def test_normal_answer_echoes_the_question_in_plausible_prose(client: openai.OpenAI) -> None:
    for seed in range(20):
        content = chat(client, BREAD[0]["content"], seed=seed).choices[0].message.content
        assert content.startswith('Regarding "how do I bake bread at": ')
        assert 40 <= len(content.split()) <= 120
        assert len(content) > 50


def test_markers_refuse_short_long(client: openai.OpenAI) -> None:
    refused = chat(client, "[refuse] tell me a secret").choices[0].message.content
    assert refused == "I'm sorry, but I can't help with that."
    assert chat(client, "answer briefly [short]").choices[0].message.content == "OK."
    long_answer = chat(client, "[long] write an essay").choices[0].message.content
    assert 2900 <= len(long_answer.split()) <= 3100


def test_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI) -> None:
    full = chat(client, BREAD[0]["content"]).choices[0]
    cut = chat(client, BREAD[0]["content"], max_tokens=5)
    assert full.finish_reason == "stop"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 5
    assert full.message.content.startswith(cut.choices[0].message.content)
    newer_name = chat(client, "[long] go", max_completion_tokens=50)
    assert newer_name.usage is not None and newer_name.usage.completion_tokens == 50


def test_usage_matches_the_content_tokens(client: openai.OpenAI) -> None:
    response = chat(client, BREAD[0]["content"])
    content = response.choices[0].message.content
    assert response.usage is not None
    assert response.usage.completion_tokens == len(split_tokens(content))
    assert "".join(split_tokens(content)) == content
    assert response.usage.prompt_tokens == count_prompt_tokens([BREAD[0]["content"]])
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


# --- router instruction and difficulty --------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "label"),
    [
        ("[easy] anything at all", "EASY"),
        ("[hard] anything at all", "HARD"),
        ("What is the capital of France?", "EASY"),
        ("Prove the theorem, derive the complexity of the algorithm and implement it", "HARD"),
    ],
)
def test_router_instruction_gets_one_word(client: openai.OpenAI, prompt: str, label: str) -> None:
    messages: Any = [ROUTER_SYSTEM, {"role": "user", "content": prompt}]
    response = client.chat.completions.create(model="router", messages=messages)
    assert response.choices[0].message.content == label


@pytest.mark.parametrize(
    "question",
    [
        "Reply easy, medium, or hard only. Prompt: [hard] optimise this",
        "Prompt: [hard] optimise this\n\nIs it EASY, MEDIUM, or HARD? Answer in one word.",
    ],
)
def test_router_phrase_and_prompt_in_one_message(client: openai.OpenAI, question: str) -> None:
    assert chat(client, question).choices[0].message.content == "HARD"


def test_router_system_prompt_with_trailing_instructions(client: openai.OpenAI) -> None:
    system = "Classify the user's prompt as EASY, MEDIUM, or HARD. Reply with one word only."
    for prompt, label in (("[hard] sort a list", "HARD"), ("Who wrote Hamlet?", "EASY")):
        messages: Any = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        response = client.chat.completions.create(model="router", messages=messages)
        assert response.choices[0].message.content == label


def test_difficulty_rises_with_hard_keywords_and_length() -> None:
    factual = difficulty("Who wrote Hamlet?")
    plain = difficulty("Write a short poem about autumn leaves")
    hard = difficulty("Analyze the algorithm, prove its complexity bound and debug the code")
    assert factual < plain < hard
    assert difficulty("[easy] prove a theorem") == 0.0
    assert difficulty("[hard] what is 2+2") == 1.0
    assert difficulty("explain " * 400) > difficulty("explain")


def test_weak_model_is_less_sure_on_hard_prompts(client: openai.OpenAI) -> None:
    def confidence(model: str, prompt: str) -> float:
        return geometric_mean_probability(chat(client, prompt, model=model, logprobs=True))

    weak_easy = confidence("gpt-small", "[easy] summarise this paragraph")
    weak_hard = confidence("gpt-small", "[hard] summarise this paragraph")
    assert weak_easy > 0.9
    assert weak_hard < 0.3
    assert confidence("gpt-big", "[easy] summarise this paragraph") > 0.9
    assert confidence("gpt-big", "[hard] summarise this paragraph") > 0.85


def test_logprobs_shape(client: openai.OpenAI) -> None:
    response = chat(client, BREAD[0]["content"], model="gpt-small", logprobs=True, top_logprobs=4)
    choice = response.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert tokens  # else the checks below hold for no token at all
    assert "".join(token.token for token in tokens) == choice.message.content
    for token in tokens:
        assert token.logprob <= 0
        assert token.bytes == list(token.token.encode("utf-8"))
        assert len(token.top_logprobs) == 4
        alternatives = [alt.logprob for alt in token.top_logprobs]
        assert all(alt < token.logprob for alt in alternatives)
        assert alternatives == sorted(alternatives, reverse=True)
        assert math.exp(token.logprob) + sum(math.exp(a) for a in alternatives) <= 1.0
    assert chat(client, BREAD[0]["content"]).choices[0].logprobs is None


def test_async_openai_client_parses_responses(sim: RunningSimulator) -> None:
    async def ask() -> Any:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
        async with client:
            return await client.chat.completions.create(
                model="any-model-name", messages=BREAD, logprobs=True, top_logprobs=2
            )

    response = asyncio.run(ask())
    assert response.object == "chat.completion"
    assert response.model == "any-model-name"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].logprobs is not None


# --- limits and faults ------------------------------------------------------------------


def test_rpm_limit_answers_429_with_retry_after(sim: RunningSimulator) -> None:
    sim.configure("limited", rpm=3)
    body = {"model": "limited", "messages": BREAD}
    statuses = [post_chat(sim, body).status_code for _ in range(3)]
    refused = post_chat(sim, body)
    assert statuses == [200, 200, 200]
    assert_openai_error(refused, 429, "rate_limit_error")
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    stats = sim.stats()
    assert stats["by_status"] == {"200": 3, "429": 1}
    assert stats["by_model"]["limited"] == {"requests": 4, "200": 3, "429": 1}
    assert len(stats["accepted_times"]["limited"]) == 3


def test_tpm_limit_counts_prompt_and_completion_tokens(sim: RunningSimulator) -> None:
    first = post_chat(sim, {"model": "tokens", "messages": BREAD})
    sim.configure("tokens", tpm=first.json()["usage"]["total_tokens"] + 10)
    refused = post_chat(sim, {"model": "tokens", "messages": BREAD})
    assert_openai_error(refused, 429, "rate_limit_error")
    assert int(refused.headers["Retry-After"]) >= 1
    assert sim.stats()["tokens"]["tokens"] == first.json()["usage"]["total_tokens"]


def test_smoothed_rpm_refuses_a_burst_the_sliding_window_would_accept(
    sim: RunningSimulator,
) -> None:
    """At 60 RPM smoothed with no burst allowance, a second request right after the first is
    ahead of the schedule (one a second) and refused; a sliding window takes 60 at once."""
    sim.configure("smooth", rpm=60, burst_s=0)
    sim.configure("window", rpm=60)
    body = {"messages": BREAD}
    smooth = [post_chat(sim, {**body, "model": "smooth"}).status_code for _ in range(2)]
    window = [post_chat(sim, {**body, "model": "window"}).status_code for _ in range(2)]
    assert smooth == [200, 429] and window == [200, 200]


def test_smoothed_limit_admits_the_steady_rate_plus_the_burst() -> None:
    """The rule on its own clock: calls every 60/rpm s are all admitted, each may come up to
    burst_s early, and one more is refused until the schedule catches up."""
    from simulator.limits import ModelLimits

    limits, now, rpm, burst = ModelLimits(), 100.0, 1200, 0.2  # one per 50 ms
    steady = [limits.admit(now + i * 0.05, 1, rpm, None, burst) for i in range(100)]
    assert steady == [None] * 100
    now += 100 * 0.05  # the schedule's next slot; 4 more fit in the 0.2 s allowance
    ahead = [limits.admit(now, 1, rpm, None, burst) for _ in range(6)]
    assert [refusal is None for refusal in ahead] == [True] * 5 + [False]
    refusal = ahead[-1]
    assert refusal is not None and refusal.kind == "requests"
    assert math.isclose(refusal.wait_s, 0.05, abs_tol=1e-9)
    assert limits.admit(now + refusal.wait_s, 1, rpm, None, burst) is None


def test_smoothed_tpm_paces_tokens() -> None:
    from simulator.limits import ModelLimits

    limits = ModelLimits()  # 600 tokens a minute: 10 a second
    assert limits.admit(0.0, 100, None, 600, 0.0) is None  # books 10 s of the schedule
    refusal = limits.admit(5.0, 10, None, 600, 0.0)
    assert refusal is not None and refusal.kind == "tokens"
    assert math.isclose(refusal.wait_s, 5.0)
    assert limits.admit(10.0, 10, None, 600, 0.0) is None


def test_error_rate_one_fails_every_request(sim: RunningSimulator) -> None:
    sim.configure("flaky", error_rate=1.0)
    for _ in range(5):
        failed = post_chat(sim, {"model": "flaky", "messages": BREAD})
        assert_openai_error(failed, 500, "server_error")
    assert post_chat(sim, {"model": "healthy", "messages": BREAD}).status_code == 200


def test_fail_next_injects_then_recovers(sim: RunningSimulator, client: openai.OpenAI) -> None:
    sim.fail_next(2, status=429, retry_after=7)
    for _ in range(2):
        refused = post_chat(sim, {"model": "m", "messages": BREAD})
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "7"
    assert post_chat(sim, {"model": "m", "messages": BREAD}).status_code == 200
    sim.fail_next(1, status=503, model="gpt-small")
    assert post_chat(sim, {"model": "gpt-big", "messages": BREAD}).status_code == 200
    with pytest.raises(openai.InternalServerError):
        chat(client, "hello", model="gpt-small")


def test_timeout_rate_hangs_past_the_client_timeout(sim: RunningSimulator) -> None:
    sim.configure("slow", timeout_rate=1.0, hang_s=5)
    impatient = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        chat(impatient, "hello", model="slow")


def test_context_tokens_limit_answers_400(sim: RunningSimulator) -> None:
    sim.configure("tiny", context_tokens=20)
    short = [{"role": "user", "content": "hi"}]
    assert post_chat(sim, {"model": "tiny", "messages": short}).is_success
    too_long = post_chat(sim, {"model": "tiny", "messages": BREAD * 3})
    assert_openai_error(too_long, 400, "invalid_request_error")
    assert too_long.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": BREAD, "stream_options": {"include_usage": True}},
        {"model": "m", "messages": BREAD, "stream": "yes"},
        {"model": "m", "messages": BREAD, "n": 2},
        {"model": "m", "messages": []},
        {"model": "m"},
        {"messages": BREAD},
        {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "m", "messages": ["hi"]},
        {"model": "m", "messages": BREAD, "max_tokens": 0},
        {"model": "m", "messages": BREAD, "top_logprobs": 3},
        [1, 2, 3],
    ],
)
def test_invalid_requests_get_400(sim: RunningSimulator, body: Any) -> None:
    assert_openai_error(post_chat(sim, body), 400, "invalid_request_error")


def test_bad_json_gets_400_and_is_counted(sim: RunningSimulator) -> None:
    response = httpx.post(f"{sim.base_url}/chat/completions", content=b"{not json", timeout=10)
    assert_openai_error(response, 400, "invalid_request_error")
    assert sim.stats()["by_status"] == {"400": 1}


def test_openai_client_sees_typed_errors(sim: RunningSimulator, client: openai.OpenAI) -> None:
    sim.configure("limited", rpm=1)
    chat(client, "one", model="limited")
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, "two", model="limited")
    assert caught.value.response.headers["retry-after"]
    with pytest.raises(openai.BadRequestError):
        chat(client, "three", stream_options={"include_usage": True})


# --- streaming ------------------------------------------------------------------------


def test_a_stream_is_the_same_answer_token_by_token(
    sim: RunningSimulator, client: openai.OpenAI
) -> None:
    """SSE chunks through the SDK: the role, one token per chunk with its logprob, the
    finish reason, the usage when asked for; the same text and logprobs as the whole
    answer."""
    whole = chat(client, "How do I bake bread?", logprobs=True)
    chunks = list(
        chat(
            client,
            "How do I bake bread?",
            logprobs=True,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    body = chunks[1:-2]
    assert all(len(c.choices[0].logprobs.content) == 1 for c in body)
    assert "".join(c.choices[0].delta.content for c in body) == whole.choices[0].message.content
    assert [c.choices[0].logprobs.content[0].logprob for c in body] == [
        t.logprob for t in whole.choices[0].logprobs.content
    ]
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in chunks[:-1])
    assert sim.stats()["by_model"]["gpt-big"] == {"requests": 2, "200": 2}


def test_a_stream_is_paced_by_tokens_per_s(sim: RunningSimulator) -> None:
    """Chunks leave the simulator one by one, not as one write (counted as separate reads
    of the raw body; no clock is compared)."""
    sim.configure("paced", tokens_per_s=200)
    body = {"model": "paced", "messages": BREAD, "stream": True}
    with httpx.stream("POST", f"{sim.base_url}/chat/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        reads = [part for part in r.iter_raw() if part]
    events = b"".join(reads).decode().strip().split("\n\n")
    assert events[-1] == "data: [DONE]" and len(events) > 20
    assert len(reads) > len(events) // 2
    with pytest.raises(ValueError, match="tokens_per_s"):
        sim.configure("paced", tokens_per_s=0)


def test_a_mid_stream_fault_breaks_off_with_an_error_event(
    sim: RunningSimulator, client: openai.OpenAI
) -> None:
    sim.fail_next(1, status=503, after_tokens=4)
    assert chat(client, "not streamed: the fault waits").choices[0].message.content
    received = []
    with pytest.raises(openai.APIError, match="mid-stream"):
        for chunk in chat(client, "How do I bake bread?", stream=True):
            received.append(chunk)
    assert len(received) == 1 + 4  # the role, then four tokens
    # The broken stream is counted once its handler returns, which may be just after the
    # client has read the error event.
    deadline = time.monotonic() + 30
    while sim.stats()["by_status"].get("503") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.stats()["by_status"] == {"200": 1, "503": 1}
    assert "".join(c.choices[0].delta.content or "" for c in chat(client, "x", stream=True))
    assert post(sim, "/admin/fail", {"count": 1, "after_tokens": -1}).status_code == 400


def test_a_client_hanging_up_is_counted_499(sim: RunningSimulator) -> None:
    sim.configure("paced", tokens_per_s=20)
    body = {"model": "paced", "messages": BREAD, "stream": True}
    with httpx.stream("POST", f"{sim.base_url}/chat/completions", json=body, timeout=30) as r:
        next(r.iter_raw())

    def counted() -> bool:
        return sim.stats()["by_model"].get("paced", {}).get("499") == 1

    deadline = time.monotonic() + 30
    while not counted() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted()


# --- models list, admin endpoints and configuration -------------------------------------


def test_models_lists_configured_names(client: openai.OpenAI) -> None:
    assert sorted(model.id for model in client.models.list()) == ["gpt-big", "gpt-small"]


def test_admin_stats_and_reset(sim: RunningSimulator) -> None:
    post_chat(sim, {"model": "a", "messages": BREAD})
    post_chat(sim, {"model": "a", "messages": BREAD})
    stats = httpx.get(f"{sim.url}/admin/stats").json()
    assert stats == sim.stats()
    assert stats["requests"] == 2
    assert stats["by_model"]["a"] == {"requests": 2, "200": 2}
    assert stats["tokens"]["a"] > 0
    assert len(stats["accepted_times"]["a"]) == 2
    assert [status for _, status, _ in stats["events"]["a"]] == [200, 200]
    assert post(sim, "/admin/reset").json() == {"ok": True}
    assert sim.stats() == {
        "requests": 0,
        "by_status": {},
        "by_model": {},
        "accepted_times": {},
        "tokens": {},
        "events": {},
    }


def test_admin_config_changes_behaviour_at_runtime(sim: RunningSimulator) -> None:
    changed = post(sim, "/admin/config", {"model": "gpt-small", "error_rate": 1.0})
    assert changed.json()["behaviour"]["error_rate"] == 1.0
    assert changed.json()["behaviour"]["skill"] == 0.3  # the rest of its settings stay
    assert post_chat(sim, {"model": "gpt-small", "messages": BREAD}).status_code == 500
    post(sim, "/admin/config", {"model": None, "rpm": 1})  # the default: any other name
    assert post_chat(sim, {"model": "fresh", "messages": BREAD}).status_code == 200
    assert post_chat(sim, {"model": "fresh", "messages": BREAD}).status_code == 429
    assert httpx.get(f"{sim.url}/admin/config").json()["default"]["rpm"] == 1
    assert post(sim, "/admin/config", {"model": None, "bogus": 1}).status_code == 400
    assert post(sim, "/admin/config", {"model": None, "error_rate": 2}).status_code == 400


def test_admin_fail_over_http(sim: RunningSimulator) -> None:
    assert post(sim, "/admin/fail", {"count": 1, "status": 502, "model": None}).is_success
    assert_openai_error(post_chat(sim, {"model": "m", "messages": BREAD}), 502, "server_error")
    assert post_chat(sim, {"model": "m", "messages": BREAD}).status_code == 200
    assert post(sim, "/admin/fail", {"status": 500}).status_code == 400
    assert post(sim, "/admin/fail", {"count": 1, "status": 200}).status_code == 400


def test_configure_from_python_rejects_unknown_fields(sim: RunningSimulator) -> None:
    assert sim.configure("x", latency_ms=5, latency_jitter_ms=2).latency_ms == 5
    with pytest.raises(ValueError, match="unknown behaviour field"):
        sim.configure("x", latency=5)


def test_config_from_toml_and_json(tmp_path: Path) -> None:
    toml_file = tmp_path / "sim.toml"
    toml_file.write_text(
        "[default]\nlatency_ms = 20\n[models.gpt-small]\nskill = 0.3\nrpm = 60\n",
        encoding="utf-8",
    )
    from_toml = SimConfig.from_file(toml_file)
    assert from_toml.default.latency_ms == 20
    assert from_toml.behaviour_for("gpt-small") == ModelBehaviour(skill=0.3, rpm=60)
    assert from_toml.behaviour_for("other") == from_toml.default
    json_file = tmp_path / "sim.json"
    json_file.write_text(json.dumps({"models": {"m": {"tpm": None, "skill": 1}}}), "utf-8")
    assert SimConfig.from_file(json_file).models["m"].skill == 1
    json_file.write_text(json.dumps({"default": {"skil": 1}}), "utf-8")
    with pytest.raises(ValueError, match="skil"):
        SimConfig.from_file(json_file)


def test_build_app_serves_without_the_thread_helper() -> None:
    async def serve_once() -> int:
        from aiohttp import web

        runner = web.AppRunner(build_app(SimConfig()))
        await runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/health"
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                return response.status
        finally:
            await runner.cleanup()

    assert asyncio.run(serve_once()) == 200


# --- load -------------------------------------------------------------------------------


def test_500_concurrent_requests_with_latency_all_succeed() -> None:
    config = SimConfig(default=ModelBehaviour(latency_ms=200, latency_jitter_ms=20))

    async def fire(base_url: str) -> list[int]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(seed: int) -> int:
                body = {"model": "load", "messages": BREAD, "seed": seed, "logprobs": True}
                async with session.post(f"{base_url}/chat/completions", json=body) as response:
                    await response.read()
                    return response.status

            return await asyncio.gather(*(one(seed) for seed in range(500)))

    with start_in_thread(config) as sim:
        statuses = asyncio.run(fire(sim.base_url))
        assert statuses == [200] * 500
        assert sim.stats()["by_model"]["load"] == {"requests": 500, "200": 500}


def test_an_answer_key_scripts_the_prompts_it_holds(tmp_path: Path) -> None:
    """A teacher for a narrow task: known prompts get the key's answer (with logprobs, cut
    by max_tokens like any answer), other prompts the usual prose."""
    key = tmp_path / "labels.jsonl"
    chat_example = {
        "messages": [
            {"role": "system", "content": "Label it."},
            {"role": "user", "content": "Very disappointing!!!"},
            {"role": "assistant", "content": "negative"},
        ]
    }
    lines = [json.dumps({"prompt": "Loved it.", "answer": "positive"}), json.dumps(chat_example)]
    key.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config_file = tmp_path / "sim.toml"
    config_file.write_text('[models.teacher]\nanswers = "labels.jsonl"\n', encoding="utf-8")
    config = SimConfig.from_file(config_file)  # the path is relative to the config's folder
    assert config.models["teacher"].answers == str(key)
    with start_in_thread(config) as running:
        client = openai.OpenAI(base_url=running.base_url, api_key="x", max_retries=0)
        known = chat(client, "  Loved it. ", model="teacher", logprobs=True)
        assert known.choices[0].message.content == "positive"
        assert known.choices[0].logprobs.content
        messages: Any = [
            {"role": "system", "content": "Another system prompt."},
            {"role": "user", "content": "Very disappointing!!!"},
        ]
        reply = client.chat.completions.create(model="teacher", messages=messages)
        assert reply.choices[0].message.content == "negative"
        other = chat(client, "Loved it?", model="teacher").choices[0].message.content
        assert other.startswith('Regarding "Loved it?"')
        plain = chat(client, "Loved it.", model="someone-else").choices[0].message.content
        assert plain != "positive"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "has no answers"),
        ("{not json\n", "line 1"),
        ('{"prompt": "a"}\n', "line 1"),
        ('{"prompt": "a", "answer": "b"}\n{"messages": [{"role": "user"}]}\n', "line 2"),
    ],
)
def test_a_bad_answer_key_fails_when_the_config_loads(
    tmp_path: Path, content: str, problem: str
) -> None:
    key = tmp_path / "key.jsonl"
    key.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=problem):
        SimConfig.from_dict({"models": {"t": {"answers": str(key)}}})
    with pytest.raises(ValueError, match="No such file"):
        SimConfig.from_dict({"models": {"t": {"answers": str(tmp_path / "missing.jsonl")}}})
