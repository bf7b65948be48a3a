"""The one token count (workers/tokens.py): the counters, the choice of counter per tier, and
the three callers (submit's context check, the limiter's estimate, the reducer's limit)
pinned to the same number for the same request through their own code paths."""

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from models import JobMode
from producer.context_window import PromptTooLong, context_limit, fit_to_context
from producer.readers import PromptInput
from producer.submit import job_settings
from simulator.tokens import count_prompt_tokens
from workers.caller import Caller
from workers.chat import ChatRequest, Completion
from workers.job_settings import AnyJobSettings, TeacherSettings
from workers.ratelimit import Limits, LocalRateLimiter
from workers.reducer import Filters, Row, build_example, teacher_counter
from workers.settings import ConfigError, ReducerConfig, Settings, TeacherConfig, TierConfig
from workers.tokens import (
    CHARS,
    DEFAULT_COMPLETION_ESTIMATE,
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    _counter,
    call_estimate,
    chat_tokens,
    counter_for,
    example_over,
)

# Text that tokenizes unlike English prose (accents, emoji, CJK, code), so the character
# estimate and tiktoken disagree on it.
QUESTION = (
    "Qu'est-ce que la photosynthèse ? 🌿 光合作用とは何ですか。 def f(x): return {'a': [1, 2]}"
)
ANSWER = "La photosynthèse convertit la lumière en énergie chimique 🌱, dans les chloroplastes."
SYSTEM = "Sé bref — « concis »."
TEXTS = [QUESTION, ANSWER, SYSTEM, "", "a", "<|endoftext|>", "\U0001f600" * 7, "x" * 1001]


def tier(model: str, **extra: Any) -> TierConfig:
    return TierConfig(base_url="http://127.0.0.1:9/v1", model=model, **extra)


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    """Each test resolves counters anew (they are cached per process)."""
    _counter.cache_clear()
    yield
    _counter.cache_clear()


# ---------------------------------------------------------------------- the counters


def test_chars_is_what_the_simulator_bills() -> None:
    for texts in (["a"], ["abcd", "abcde"], ["x" * 1001, "", "\U0001f600" * 7]):
        messages = [{"role": "user", "content": text} for text in texts]
        assert chat_tokens(messages, CHARS) == count_prompt_tokens(texts)


def test_tiktoken_counts_the_models_encoding() -> None:
    gpt4 = counter_for(tier("gpt-4"))
    assert gpt4.name == "tiktoken:cl100k_base"
    assert gpt4.count("tiktoken is great!") == 6  # the OpenAI cookbook's example
    assert gpt4.count("<|endoftext|>") == 7  # a special token's text is plain text to the API
    messages = [{"role": "user", "content": "tiktoken is great!"}]
    assert chat_tokens(messages, gpt4) == 6 + TOKENS_PER_MESSAGE + REPLY_PRIMING_TOKENS


def test_a_request_is_its_messages_overhead_and_answer() -> None:
    messages = [{"role": "system", "content": "x" * 40}, {"role": "user", "content": "y" * 400}]
    assert chat_tokens(messages, CHARS) == 10 + 100 + 2 * 4 + 3
    sim = tier("sim-small")
    assert call_estimate(sim, messages, 50) == 121 + 50
    assert call_estimate(sim, messages, None) == 121 + DEFAULT_COMPLETION_ESTIMATE


@pytest.mark.parametrize("model", ["sim-small", "gpt-4"])
def test_head_is_a_prefix_within_the_budget(model: str) -> None:
    counter = counter_for(tier(model))
    text = QUESTION * 5
    for budget in range(0, counter.count(text) + 2):
        head = counter.head(text, budget)
        assert text.startswith(head)
        assert counter.count(head) <= budget
        # at most a character split across two tokens is lost
        assert counter.count(head) >= min(budget, counter.count(text)) - 1


@pytest.mark.parametrize("model", ["sim-small", "gpt-4"])
def test_bound_is_never_below_the_count(model: str) -> None:
    counter = counter_for(tier(model))
    for text in TEXTS:
        assert counter.bound(text) >= counter.count(text)


@pytest.mark.parametrize("model", ["sim-small", "gpt-4"])
def test_example_over_is_the_exact_count_at_the_limit(model: str) -> None:
    counter = counter_for(tier(model))
    example = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": ANSWER},
    ]
    exact = chat_tokens(example[:-1], counter, completion=counter.count(ANSWER))
    assert [example_over(example, counter, limit) for limit in (exact - 1, exact)] == [True, False]


# ---------------------------------------------------------------- which counter a tier uses


@pytest.mark.parametrize(
    ("model", "tokenizer", "expected"),
    [
        ("gpt-4", "auto", "tiktoken:cl100k_base"),
        ("gpt-3.5-turbo", "auto", "tiktoken:cl100k_base"),
        ("gpt-4", "tiktoken", "tiktoken:cl100k_base"),
        ("gpt-4", "chars", "chars"),
        ("gpt-4o-mini", "auto", "chars"),  # o200k_base is not installed: it would be downloaded
        ("sim-small", "auto", "chars"),  # not a model tiktoken knows
        ("meta-llama/Llama-3.1-8B-Instruct", "auto", "chars"),
    ],
)
def test_the_tiers_config_says_which_counter(model: str, tokenizer: str, expected: str) -> None:
    assert counter_for(tier(model, tokenizer=tokenizer)).name == expected


@pytest.mark.parametrize("model", ["gpt-4o-mini", "sim-small"])
def test_tiktoken_asked_for_where_it_cannot_count_is_a_config_error(model: str) -> None:
    with pytest.raises(ConfigError, match=f"model '{model}' has tokenizer = \"tiktoken\""):
        counter_for(tier(model, tokenizer="tiktoken"))


def test_no_encoding_is_ever_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken.load
    import tiktoken.registry

    read: list[str] = []
    real_read = tiktoken.load.read_file

    def reading(path: str) -> bytes:
        read.append(path)
        return real_read(path)

    # every encoding tiktoken loads, from a file or a URL, goes through read_file
    monkeypatch.setattr(tiktoken.load, "read_file", reading)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # nothing loaded yet
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # nor cached
    assert counter_for(tier("gpt-4o")).name == "chars"
    assert counter_for(tier("gpt-4")).name == "tiktoken:cl100k_base"
    assert read and not [path for path in read if "://" in path]


def test_without_tiktoken_auto_counts_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` raises ImportError
    assert counter_for(tier("gpt-4")) is CHARS
    with pytest.raises(ConfigError, match="tiktoken is not installed"):
        counter_for(tier("gpt-4", tokenizer="tiktoken"))


def test_submit_refuses_a_tiktoken_tier_that_cannot_count() -> None:
    settings = Settings(tiers={"frontier": tier("gpt-4o", tokenizer="tiktoken")})
    with pytest.raises(ConfigError, match="gpt-4o"):
        context_limit(TeacherSettings(tier="frontier"), settings)


# ------------------------------------------------ three callers, one number per request


class RecordingLimiter(LocalRateLimiter):
    """The in-process limiter, keeping the estimate each call asked it for."""

    def __init__(self) -> None:
        super().__init__()
        self.acquired: list[int] = []

    async def acquire(
        self, tier: str, limits: Limits, tokens: int, *, max_wait_s: float | None = None
    ) -> str | None:
        self.acquired.append(tokens)
        return await super().acquire(tier, limits, tokens, max_wait_s=max_wait_s)


class AnsweringClient:
    """Stands in for the HTTP client: the estimate is taken before any request goes out."""

    async def call(self, tier: TierConfig, request: ChatRequest) -> Completion:
        return Completion(ANSWER, 1, 1, None, 1.0, "stop")

    async def close(self) -> None:
        pass


def submit_count(prompt: PromptInput, job: AnyJobSettings, settings: Settings) -> int:
    """The tokens submit's context check measures for the prompt, read from its refusal."""
    limit = context_limit(job, settings)
    with pytest.raises(PromptTooLong) as refused:
        fit_to_context([prompt], limit=limit, job=job, source="f")
    return int(str(refused.value).split("prompt is ~")[1].split(" ")[0])


def fits_at_submit(prompt: PromptInput, job: AnyJobSettings, settings: Settings) -> bool:
    limit = context_limit(job, settings)
    try:
        fit_to_context([prompt], limit=limit, job=job, source="f")
    except PromptTooLong:
        return False
    return True


def limiter_estimate(job: AnyJobSettings, prompt: PromptInput, settings: Settings) -> int:
    """What the worker's call path asks the limiter for, before the call goes out."""
    limiter = RecordingLimiter()
    caller = Caller(client=AnsweringClient(), limiter=limiter)  # type: ignore[arg-type]
    request = job.request(prompt.messages)
    asyncio.run(caller.call(settings.require_tier("frontier"), request))
    return limiter.acquired[0]


def reducer_verdict(job: AnyJobSettings, prompt: PromptInput, limit: int, s: Settings) -> str:
    """The reducer's decision on the example the prompt's answer makes, under `limit`."""
    filters = Filters(
        ReducerConfig(min_length=0, max_example_tokens=limit),
        teacher_counter(job.to_params(), s),
    )
    row = Row(0, "succeeded", prompt.messages, ANSWER)
    return filters.reject_reason(row, build_example(row, job.system_prompt)) or "kept"


@pytest.mark.parametrize("model", ["sim-frontier", "gpt-4"])
def test_submit_limiter_and_reducer_count_a_request_alike(model: str) -> None:
    answer_tokens = counter_for(tier(model)).count(ANSWER)

    def settings_with(context_tokens: int) -> Settings:
        frontier = tier(model, context_tokens=context_tokens)
        return Settings(tiers={"frontier": frontier}, teacher=TeacherConfig(system_prompt=SYSTEM))

    settings = settings_with(answer_tokens + 1)  # too small for any prompt
    params = job_settings(
        JobMode.TEACHER, settings, router=None, overrides={"max_tokens": answer_tokens}
    )
    prompt = PromptInput([{"role": "user", "content": QUESTION}], None, None, line=1)
    prompt_tokens = submit_count(prompt, params, settings)
    call_tokens = prompt_tokens + answer_tokens

    # submit: the prompt fits a context of exactly its tokens and the answer's reserve
    assert fits_at_submit(prompt, params, settings_with(call_tokens))
    assert not fits_at_submit(prompt, params, settings_with(call_tokens - 1))
    # the limiter: the same prompt and max_tokens for the answer
    assert limiter_estimate(params, prompt, settings) == call_tokens
    # the reducer: the example is the same prompt with an answer of max_tokens tokens
    assert reducer_verdict(params, prompt, call_tokens, settings) == "kept"
    assert reducer_verdict(params, prompt, call_tokens - 1, settings) == "too_long"


def test_the_counters_disagree_on_this_request() -> None:
    """What makes the test above worth parametrising: the two counters differ here."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    assert chat_tokens(messages, CHARS) != chat_tokens(messages, counter_for(tier("gpt-4")))
