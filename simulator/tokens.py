"""A stand-in tokenizer: cheap, deterministic and lossless enough to count with.

Completion tokens are words and single punctuation marks, each carrying the whitespace
before it the way BPE tokens do (" bread", ","), so joining tokens rebuilds the text.

Prompt tokens are an approximation (no tokenizer runs over the prompt):
ceil(characters / 4) + 4 per message, plus 3 for the reply's priming, which is close to
what OpenAI bills for English text.
"""

import math
import re
from collections.abc import Sequence

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])")

TOKENS_PER_MESSAGE = 4
REPLY_PRIMING_TOKENS = 3


def split_tokens(text: str) -> list[str]:
    """Trailing whitespace is dropped; everything else survives `"".join(...)`."""
    return _TOKEN.findall(text)


def count_prompt_tokens(message_texts: Sequence[str]) -> int:
    per_message = sum(math.ceil(len(text) / 4) + TOKENS_PER_MESSAGE for text in message_texts)
    return per_message + REPLY_PRIMING_TOKENS
