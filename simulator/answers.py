"""Deterministic answer text: a pure function of (model, messages, seed).

The same request always gets byte-identical content (and logprobs); another model name or
another seed gets different text. Everything is derived from a blake2b hash of the
inputs, never from Python's per-process `hash`.

Normal answers are 40-120 words of plausible prose, opening with a sentence that echoes
the first words of the last user message: `Regarding "how do I bake bread": ...`.

A behaviour's answer key (simulator.answer_key) comes first: a prompt it holds gets its
answer. Otherwise, markers, looked for in the last user message, let downstream tests know
what they get:

    [refuse]   content is exactly "I'm sorry, but I can't help with that."
    [short]    content is exactly "OK."
    [long]     about 3000 words (still cut by max_tokens)
    [loop]     one sentence of the answer said 12 times over (a degenerate loop)
    [junk]     a line of symbols and emoji, nearly no words
    [hard]     difficulty 1.0 (low confidence from a weak model; router says HARD)
    [easy]     difficulty 0.0 (high confidence from any model; router says EASY)

Router instruction: when any message contains "EASY, MEDIUM, or HARD" (any case), the
answer is exactly one word, EASY / MEDIUM / HARD, from the difficulty of the text being
classified: the last user message minus the instruction's clause (so the prompt may come
before or after the phrase), or the last user message whole when the instruction is in a
system prompt. This takes precedence over the content markers.

Judge instruction (a test stand-in for `eval agreement --judge`, not a real judge): when any
message contains "agree in meaning" (any case), the answer is exactly YES or NO. The two
answers are read from the last user message's lines `Reference answer: "..."` and
`Candidate answer: "..."` (JSON strings); the rule is YES when their word sets (lower-case
runs of letters and digits) share more than half of all the words either uses (Jaccard
similarity > 0.5), NO otherwise, and NO when either line is missing or not a JSON string.
This takes precedence over the router instruction and the content markers.

Score instruction (a test stand-in for `distillery judge`, not a real judge): when any
message contains "score the answer from 1 to 10" (any case), the answer is one line,
`SCORE: N - reason`, read from the last user message's `Question: "..."` and `Answer: "..."`
lines (JSON strings). N comes from the answer's text: 1 for a refusal (it starts with
"I'm sorry" or "I can't") or an answer under 5 words; otherwise 2 points for using any of
the question's words of 4+ letters, plus up to 8 for length (one per 12 words, 96+ words
earn all 8), at most 10. Without both lines the reply is "I cannot score this." (which no
score parser reads). This takes precedence over the judge instruction and everything else.
"""

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from simulator.answer_key import load_answer_key
from simulator.difficulty import difficulty, difficulty_label
from simulator.tokens import split_tokens
from simulator.vocabulary import WORDS

REFUSAL = "I'm sorry, but I can't help with that."
SHORT_ANSWER = "OK."
REFUSE_MARKER = "[refuse]"
SHORT_MARKER = "[short]"
LONG_MARKER = "[long]"
LOOP_MARKER = "[loop]"
JUNK_MARKER = "[junk]"
JUNK_ANSWER = "✨🔥💯 ### >>> <<< ~~~ 🎉🎉🎉 ### ||| ~~~ 💥💥 *** " * 3  # 140 characters, no word
ROUTER_PHRASE = "easy, medium, or hard"
JUDGE_PHRASE = "agree in meaning"
SCORE_PHRASE = "score the answer from 1 to 10"
GARBAGE = "~~ ### ?? ~~"  # what a model gone wrong says (garbage_rate): nothing reads it

LONG_ANSWER_WORDS = 3000
ECHO_WORDS = 6
# body word counts chosen so that echo + body + the last sentence's overshoot stays in 40..120
BODY_WORDS_MIN, BODY_WORDS_MAX = 34, 98
SENTENCE_WORDS_MIN, SENTENCE_WORDS_MAX = 6, 14
SENTENCES_PER_PARAGRAPH = 6
_CLAUSE_ENDS = (".", "!", "?", ":", "\n")  # where the instruction's clause begins, at the latest

_MARKER = re.compile(r"\[[a-z]+\]", re.IGNORECASE)
_ROUTER = re.compile(re.escape(ROUTER_PHRASE), re.IGNORECASE)
_JUDGE = re.compile(re.escape(JUDGE_PHRASE), re.IGNORECASE)
_JUDGED = re.compile(r"^(Reference|Candidate) answer: (.*)$", re.MULTILINE)
_SCORE = re.compile(re.escape(SCORE_PHRASE), re.IGNORECASE)
_SCORED = re.compile(r"^(Question|Answer): (.*)$", re.MULTILINE)

Message = tuple[str, str]  # (role, text)


@dataclass(frozen=True, slots=True)
class Answer:
    content: str
    tokens: list[str]  # "".join(tokens) == content
    finish_reason: str  # "stop", or "length" when max_tokens cut it
    difficulty: float  # of the prompt, drives the logprobs
    key: int  # stable per (model, messages, seed); seeds anything else derived from it


def answer(
    model: str,
    messages: Sequence[Message],
    seed: int | None,
    max_tokens: int | None,
    answer_key: str | None = None,
) -> Answer:
    """`answer_key`: a behaviour's `answers` file, whose prompts get its answers."""
    key = stable_key(model, messages, seed)
    scripted = _scripted(messages, answer_key)
    if scripted is not None:
        content, prompt_difficulty = scripted
    else:
        content, prompt_difficulty = _full_content(messages, random.Random(key))
    tokens = split_tokens(content)
    finish_reason = "stop"
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens = tokens[:max_tokens]
        content = "".join(tokens)
        finish_reason = "length"
    return Answer(content, tokens, finish_reason, prompt_difficulty, key)


def stable_key(model: str, messages: Sequence[Message], seed: int | None) -> int:
    payload = json.dumps([model, list(messages), seed], ensure_ascii=False)
    digest = hashlib.blake2b(payload.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def garbage_answer(result: Answer) -> Answer:
    tokens = split_tokens(GARBAGE)
    return Answer(GARBAGE, tokens, "stop", result.difficulty, result.key)


def _scripted(messages: Sequence[Message], answer_key: str | None) -> tuple[str, float] | None:
    if answer_key is None:
        return None
    last = last_user_text(messages)
    known = load_answer_key(answer_key).get(last.strip())
    return None if known is None else (known, difficulty(last))


def _full_content(messages: Sequence[Message], rng: random.Random) -> tuple[str, float]:
    if any(_SCORE.search(text) for _, text in messages):
        return score_reply(last_user_text(messages)), 0.0
    if any(_JUDGE.search(text) for _, text in messages):
        return judge_verdict(last_user_text(messages)), 0.0
    router_text = _router_subject(messages)
    if router_text is not None:
        score = difficulty(router_text)
        return difficulty_label(score), score
    last = last_user_text(messages)
    score = difficulty(last)
    lowered = last.lower()
    if REFUSE_MARKER in lowered:
        return REFUSAL, score
    if SHORT_MARKER in lowered:
        return SHORT_ANSWER, score
    if LONG_MARKER in lowered:
        return _echo(last) + _prose(rng, LONG_ANSWER_WORDS), score
    if LOOP_MARKER in lowered:
        return _echo(last) + " ".join([_sentence(rng, 10)] * 12), score
    if JUNK_MARKER in lowered:
        return JUNK_ANSWER, score
    return _echo(last) + _prose(rng, rng.randint(BODY_WORDS_MIN, BODY_WORDS_MAX)), score


def last_user_text(messages: Sequence[Message]) -> str:
    """Falls back to the whole conversation when there is no user message."""
    for role, text in reversed(messages):
        if role == "user":
            return text
    return "\n".join(text for _, text in messages)


def judge_verdict(text: str) -> str:
    """YES when the quoted answers share most of their words (see the module docstring)."""
    quoted: dict[str, str] = {}
    for which, raw in _JUDGED.findall(text):
        try:
            value = json.loads(raw)
        except ValueError:
            return "NO"
        if not isinstance(value, str):
            return "NO"
        quoted[which] = value
    if set(quoted) != {"Reference", "Candidate"}:
        return "NO"
    ref, cand = (set(re.findall(r"[^\W_]+", quoted[k].lower())) for k in ("Reference", "Candidate"))
    union = ref | cand
    return "YES" if union and 2 * len(ref & cand) > len(union) else "NO"


def score_reply(text: str) -> str:
    """`SCORE: N - reason` from the quoted question and answer (see the module docstring)."""
    quoted: dict[str, str] = {}
    for which, raw in _SCORED.findall(text):
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, str):
            quoted[which] = value
    if set(quoted) != {"Question", "Answer"}:
        return "I cannot score this."
    answer_text = quoted["Answer"]
    words = re.findall(r"[^\W_]+", answer_text.lower())
    if answer_text.lstrip().lower().startswith(("i'm sorry", "i can't")) or len(words) < 5:
        return f"SCORE: 1 - a refusal or next to nothing ({len(words)} words)"
    asked = {w for w in re.findall(r"[^\W_]+", quoted["Question"].lower()) if len(w) >= 4}
    on_topic = bool(asked & set(words))
    score = min(10, 2 * on_topic + min(8, len(words) // 12))
    topic = "uses the question's words" if on_topic else "none of the question's words"
    return f"SCORE: {max(score, 1)} - {len(words)} words, {topic}"


def _router_subject(messages: Sequence[Message]) -> str | None:
    """The text a router asks about, or None when this is not a router request.

    The instruction usually sits either in a system prompt (then the last user message is
    the subject) or in the user message around the prompt ("Classify as EASY, MEDIUM, or
    HARD: <prompt>", or "<prompt> Is it EASY, MEDIUM, or HARD?"); then the subject is that
    message without the instruction's own clause, so it works wherever the prompt sits."""
    if not any(_ROUTER.search(text) for _, text in messages):
        return None
    last = last_user_text(messages)
    found = _ROUTER.search(last)
    if found is None:
        return last
    clause_start = max(last.rfind(mark, 0, found.start()) for mark in _CLAUSE_ENDS) + 1
    subject = last[:clause_start] + last[found.end() :]
    return subject if re.search(r"\w", subject) else "\n".join(t for _, t in messages)


def _echo(text: str) -> str:
    words = _MARKER.sub(" ", text).replace('"', "").split()[:ECHO_WORDS]
    if not words:
        return "Regarding your request: "
    return f'Regarding "{" ".join(words)}": '


def _prose(rng: random.Random, words_wanted: int) -> str:
    """Sentences of 6-14 words, a paragraph break every few sentences."""
    parts: list[str] = []
    written = 0
    while written < words_wanted:
        count = rng.randint(SENTENCE_WORDS_MIN, SENTENCE_WORDS_MAX)
        parts.append(_sentence(rng, count))
        written += count
        if len(parts) % SENTENCES_PER_PARAGRAPH == 0 and written < words_wanted:
            parts.append("\n\n")
    return " ".join(parts).replace(" \n\n ", "\n\n")


def _sentence(rng: random.Random, count: int) -> str:
    words = rng.choices(WORDS, k=count)
    if count >= 9:  # a comma now and then, so the text does not read like a word list
        comma_after = rng.randint(3, count - 4)
        words[comma_after] += ","
    words[0] = words[0].capitalize()
    return " ".join(words) + "."
