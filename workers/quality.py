"""The reducer's content rules, one pure function each: is an answer cut off, a refusal, a
degenerate loop, or mostly not text. docs/training-data.md explains each, its default and
how to change it."""

import re
import unicodedata
from collections.abc import Sequence

# Where the first sentence ends: a full stop, question or exclamation mark followed by
# whitespace, or a line break. A refusal that far in is a refusal; one further in is
# usually a caveat inside a real answer ("... but I can't help noticing ...").
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)|\n")
FIRST_SENTENCE_MAX = 300  # characters, for an answer with no sentence end at all
# Curly apostrophes (U+2019 and the like) count as straight ones.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})

LOOP_MIN_WORDS = 20
LOOP_NGRAM = 4
BLOB_RUN = 80  # characters without whitespace: a base64 or hex blob, not words


def first_sentence(text: str) -> str:
    found = _SENTENCE_END.search(text)
    end = found.end() if found else len(text)
    return text[: min(end, FIRST_SENTENCE_MAX)]


def normalise_phrases(phrases: Sequence[str]) -> tuple[str, ...]:
    return tuple(p.translate(_APOSTROPHES).casefold() for p in phrases if p.strip())


def is_refusal(answer: str, phrases: tuple[str, ...]) -> bool:
    """`phrases` from normalise_phrases: any of them in the answer's first sentence."""
    sentence = first_sentence(answer.lstrip()).translate(_APOSTROPHES).casefold()
    return any(phrase in sentence for phrase in phrases)


def repeat_fraction(answer: str) -> float:
    """The share of the answer's word 4-grams that occurred earlier in it: near 0 for
    prose, near 1 for a model stuck saying the same thing; 0 for answers too short to tell."""
    words = answer.casefold().split()
    if len(words) < LOOP_MIN_WORDS:
        return 0.0
    grams = [tuple(words[i : i + LOOP_NGRAM]) for i in range(len(words) - LOOP_NGRAM + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def _is_text_char(char: str) -> bool:
    # Letters and marks of any script (Arabic, Hebrew, combining accents), digits,
    # whitespace and punctuation are text; symbols (emoji included), control and private
    # use characters and U+FFFD are not. Maths and currency signs count as text (code, sums).
    category = unicodedata.category(char)
    if char == "\ufffd":
        return False
    return category[0] in "LMNPZ" or category in ("Sm", "Sc") or char in "\n\t\r"


def non_text_fraction(answer: str) -> float:
    """The share of characters that are not text, counting every character of a run of
    BLOB_RUN or more without whitespace as not text; 1.0 when the answer has no letter or
    digit at all (a line of punctuation and symbols says nothing)."""
    if not answer:
        return 0.0
    if not any(c.isalnum() for c in answer):
        return 1.0
    blob = sum(len(run) for run in answer.split() if len(run) >= BLOB_RUN)
    rest = sum(
        1 for run in answer.split() if len(run) < BLOB_RUN for c in run if not _is_text_char(c)
    )
    return (blob + rest) / len(answer)


_WORDS = re.compile(r"[^\W_]+")


def normalise_text(text: str) -> str:
    """What near-duplicate detection compares: case, punctuation and whitespace ignored
    (NFKC first, so full-width and composed forms compare equal)."""
    return " ".join(_WORDS.findall(unicodedata.normalize("NFKC", text).casefold()))


SHINGLE = 5  # characters: one changed word moves few shingles, however short the words


def shingles(text: str) -> set[bytes]:
    """Character 5-grams of the normalised text (the text itself when shorter)."""
    norm = normalise_text(text)
    if len(norm) <= SHINGLE:
        return {norm.encode()} if norm else set()
    return {norm[i : i + SHINGLE].encode() for i in range(len(norm) - SHINGLE + 1)}


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0
