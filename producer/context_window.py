"""A prompt's length against its tier's context window, checked at submit, before anything
is stored.

Which context applies:

* teacher jobs: the teacher tier's (the job's `tier`, after any --tier override);
* route jobs: the *largest* among the job's tiers. A prompt that fits only a bigger tier is
  still accepted: the router may send it to a smaller one, whose server answers 400 and the
  prompt escalates along the fallback chain like any failed call. Rejecting it instead would
  refuse prompts the job can answer. When any of the job's tiers has no `context_tokens`,
  its context is unknown and route prompts are not checked.

The tier that sets the limit also sets the policy (`context_policy`): `reject` refuses the
file listing every prompt over it as `file:line: ...`; `truncate` keeps the head of each such
prompt's last user message (the question itself is at its start more often than not), says
so on stderr and records it in the prompt's metadata under `distillery_truncated`.

Tokens are counted by the limiting tier's counter (`workers.tokens`: the model's tiktoken
encoding, or about 4 characters a token), the count the rate limiter and the reducer use.
Where characters are counted, text that tokenizes densely (code, CJK) is underestimated;
the provider's own `context_length_exceeded` answer stays the backstop.
"""

import dataclasses
from typing import Any

from producer.readers import MAX_PROBLEMS_SHOWN, InputFileError, PromptInput
from workers.job_settings import AnyJobSettings, JobSettings
from workers.settings import Settings
from workers.tokens import CHARS, TokenCounter, chat_tokens, counter_for

TRUNCATION_METADATA_KEY = "distillery_truncated"

__all__ = [
    "TRUNCATION_METADATA_KEY",
    "ContextLimit",
    "Fitted",
    "PromptTooLong",
    "context_limit",
    "fit_to_context",
]


class PromptTooLong(InputFileError):
    """Prompts over their tier's context; the file's format is fine, so no format hint."""

    hint = None


@dataclasses.dataclass(frozen=True, slots=True)
class ContextLimit:
    tier: str
    context_tokens: int
    answer_tokens: int  # the job's max_tokens, reserved for the answer; 0 when unset
    policy: str  # "reject" | "truncate"
    largest_of: int = 1  # how many tiers it was chosen among (route jobs)
    counter: TokenCounter = CHARS  # the tier's, as its limiter counts the same request

    @property
    def prompt_budget(self) -> int:
        return self.context_tokens - self.answer_tokens

    def describe(self) -> str:
        text = f"tier '{self.tier}' context of {self.context_tokens}"
        if self.answer_tokens:
            text += f" less max_tokens {self.answer_tokens} for the answer"
        if self.largest_of > 1:
            text += f" (the largest of the job's {self.largest_of} tiers)"
        return text


@dataclasses.dataclass(frozen=True, slots=True)
class Fitted:
    prompts: list[PromptInput]
    truncated: int = 0
    notices: tuple[str, ...] = ()  # a line per truncated prompt (the first few), then a count


def context_limit(job: AnyJobSettings, settings: Settings) -> ContextLimit | None:
    """The context a job's prompts must fit, or None when it is unknown. A tier that asks
    for tiktoken where its encoding does not load fails here (ConfigError), not in a worker."""
    names = list(job.tiers)
    for tier_config in map(settings.require_tier, names):
        if tier_config.tokenizer == "tiktoken":
            counter_for(tier_config)
    contexts = {name: settings.require_tier(name).context_tokens for name in names}
    if any(tokens is None for tokens in contexts.values()):
        return None  # an unbounded (unconfigured) tier can take any prompt
    tier = max(names, key=lambda name: contexts[name] or 0)
    config = settings.require_tier(tier)
    assert config.context_tokens is not None
    return ContextLimit(
        tier=tier,
        context_tokens=config.context_tokens,
        answer_tokens=job.max_tokens or 0,
        policy=config.context_policy,
        largest_of=len(names),
        counter=counter_for(config),
    )


def fit_to_context(
    prompts: list[PromptInput], *, limit: ContextLimit | None, job: JobSettings, source: str
) -> Fitted:
    """The prompts, cut where the policy allows; raise PromptTooLong listing every prompt that
    does not fit, so nothing of the file is stored."""
    if limit is None:
        return Fitted(prompts)
    problems: list[str] = []
    notes: list[str] = []
    fitted: list[PromptInput] = []
    for prompt in prompts:
        outcome = _fit_one(prompt, limit, job, f"{source}:{prompt.line}")
        if isinstance(outcome, str):
            problems.append(outcome)
            continue
        fitted.append(outcome)
        if outcome is not prompt:
            notes.append(_truncation_note(outcome, limit, source))
    if problems:
        raise PromptTooLong(problems)
    return Fitted(fitted, len(notes), _summarised(notes, limit))


def _fit_one(
    prompt: PromptInput, limit: ContextLimit, job: JobSettings, place: str
) -> PromptInput | str:
    """The prompt itself when it fits, a cut copy, or the problem to report."""
    # Measured on what the worker will send: the job's system prompt is added there.
    sent = job.request(prompt.messages).messages
    tokens = chat_tokens(sent, limit.counter)
    if tokens <= limit.prompt_budget:
        return prompt
    over = f"{place}: prompt is ~{tokens} tokens, over {limit.describe()}"
    if limit.policy != "truncate":
        return over
    keep_tokens = _tokens_that_fit(sent, limit)
    if keep_tokens < 1:
        return f"{over}, even with its last user message cut"
    return _cut(prompt, keep_tokens, tokens, limit)


def _tokens_that_fit(sent: list[dict[str, Any]], limit: ContextLimit) -> int:
    """How much of the last (user) message fits once every other message is counted."""
    without_last = [*sent[:-1], {**sent[-1], "content": ""}]
    return limit.prompt_budget - chat_tokens(without_last, limit.counter)


def _cut(prompt: PromptInput, keep_tokens: int, tokens: int, limit: ContextLimit) -> PromptInput:
    # The readers guarantee the last message is the user's; that is the one cut.
    last = prompt.messages[-1]
    kept = limit.counter.head(last["content"], keep_tokens)
    messages = [*prompt.messages[:-1], {**last, "content": kept}]
    record = {
        "tier": limit.tier,
        "context_tokens": limit.context_tokens,
        "estimated_tokens": tokens,
        "original_chars": len(last["content"]),
        "kept_chars": len(kept),
    }
    metadata = {**(prompt.metadata or {}), TRUNCATION_METADATA_KEY: record}
    return dataclasses.replace(prompt, messages=messages, metadata=metadata)


def _truncation_note(prompt: PromptInput, limit: ContextLimit, source: str) -> str:
    assert prompt.metadata is not None
    record = prompt.metadata[TRUNCATION_METADATA_KEY]
    return (
        f"{source}:{prompt.line}: prompt was ~{record['estimated_tokens']} tokens, over "
        f"{limit.describe()}; kept the first {record['kept_chars']} of "
        f"{record['original_chars']} characters of its last user message"
    )


def _summarised(notes: list[str], limit: ContextLimit) -> tuple[str, ...]:
    if not notes:
        return ()
    shown = notes[:MAX_PROBLEMS_SHOWN]
    hidden = len(notes) - len(shown)
    if hidden:
        shown.append(f"... and {hidden} more")
    count = f"{len(notes)} {'prompt' if len(notes) == 1 else 'prompts'}"
    shown.append(
        f"truncated {count} to fit {limit.describe()}; "
        f"see metadata.{TRUNCATION_METADATA_KEY} in `distillery results`"
    )
    return tuple(shown)
