"""The reducer's content rules, one pure function each: is an answer cut off, a refusal, a
degenerate loop, or mostly not text. docs/training-data.md explains each, its default and
how to change it."""

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

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
    grams = len(words) - LOOP_NGRAM + 1
    return 1.0 - len(set(zip(words, words[1:], words[2:], words[3:], strict=False))) / grams


def _is_text_char(char: str) -> bool:
    # Letters and marks of any script (Arabic, Hebrew, combining accents), digits,
    # whitespace and punctuation are text; symbols (emoji included), control and private
    # use characters and U+FFFD are not. Maths and currency signs count as text (code, sums).
    category = unicodedata.category(char)
    if char == "\ufffd":
        return False
    return category[0] in "LMNPZ" or category in ("Sm", "Sc") or char in "\n\t\r"


# ASCII control characters other than tab and line ends; other ASCII is text.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ALNUM = re.compile(r"[^\W_]")


def non_text_fraction(answer: str) -> float:
    """The share of characters that are not text, counting every character of a run of
    BLOB_RUN or more without whitespace as not text; 1.0 when the answer has no letter or
    digit at all (a line of punctuation and symbols says nothing). Only the non-ASCII
    characters are looked up one by one (the reducer runs this on every answer)."""
    if not answer:
        return 0.0
    if _ALNUM.search(answer) is None:
        return 1.0
    runs = answer.split()
    blobs = [run for run in runs if len(run) >= BLOB_RUN]
    rest = " ".join(run for run in runs if len(run) < BLOB_RUN) if blobs else answer
    non_text = sum(len(run) for run in blobs) + len(_ASCII_CONTROL.findall(rest))
    non_text += sum(1 for c in _NON_ASCII.findall(rest) if not _is_text_char(c))
    return non_text / len(answer)


_WORDS = re.compile(r"[^\W_]+")


def normalise_text(text: str) -> str:
    """What near-duplicate detection compares: case, punctuation and whitespace ignored
    (NFKC first, so full-width and composed forms compare equal)."""
    return " ".join(_WORDS.findall(unicodedata.normalize("NFKC", text).casefold()))


SHINGLE = 5  # bytes of the normalised UTF-8 text: one changed word moves few shingles
_SPREAD = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads a 40-bit window to 64


def shingle_hashes(text: str) -> "np.ndarray[Any, np.dtype[np.uint32]]":
    """The 32-bit hashes of the normalised text's 5-byte windows (the whole text
    when shorter), computed with numpy in one pass: no Python work per shingle, which is
    what near-duplicate detection spends most of its time on otherwise."""
    data = np.frombuffer(normalise_text(text).encode(), dtype=np.uint8)
    if len(data) == 0:
        return np.empty(0, dtype=np.uint32)
    if len(data) < SHINGLE:
        data = np.concatenate([data, np.zeros(SHINGLE - len(data), dtype=np.uint8)])
    count = len(data) - SHINGLE + 1
    window = np.zeros(count, dtype=np.uint64)
    for i in range(SHINGLE):
        window |= data[i : i + count].astype(np.uint64) << np.uint64(8 * i)
    return ((window * _SPREAD) >> np.uint64(32)).astype(np.uint32)  # repeats do no harm


def jaccard(a: "np.ndarray[Any, Any]", b: "np.ndarray[Any, Any]") -> float:
    """Exact Jaccard similarity of the shingle sets of two shingle_hashes arrays."""
    union = len(np.union1d(a, b))
    return len(np.intersect1d(a, b)) / union if union else 1.0
