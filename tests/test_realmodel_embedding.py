"""The embedding feature set on the real SmolLM2-135M GGUF through llama.cpp: unit vectors
of the model's width, the same vector for the same prompt, related prompts nearer than
unrelated ones, and a router trained on them saved, loaded and deciding."""

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.realmodel import require_real_model
from workers.routers.classifier import ClassifierRouter, load_classifier, save_classifier
from workers.routers.features import EmbeddingFeatures, clear_embedding_cache
from workers.routers.training import fit_model

EASY = [f"What is {a} plus {a + 1}?" for a in range(2, 8)]
HARD = [
    f"Prove that every group of order {p * p} is abelian, for the prime {p}."
    for p in (2, 3, 5, 7, 11, 13)
]


@pytest.mark.slow
def test_embeddings_from_the_real_model(tmp_path: Path) -> None:
    model_path = str(require_real_model())
    features = EmbeddingFeatures(model_path=model_path, max_tokens=32).fit([])
    maths, more_maths, poem = features.transform(
        ["What is 2 plus 3?", "What is 4 plus 9?", "Write a sonnet about the grey sea."]
    )
    assert maths.shape == (576,)  # SmolLM2-135M's hidden size
    assert np.linalg.norm(maths) == pytest.approx(1.0, abs=1e-4)
    clear_embedding_cache()
    again = features.transform(["What is 2 plus 3?"])[0]
    assert np.allclose(again, maths, atol=1e-4)  # computed afresh: the same vector
    assert float(maths @ more_maths) > float(maths @ poem)

    model = fit_model([*EASY, *HARD], [0] * len(EASY) + [2] * len(HARD), features=("embedding",))
    assert model.features == ("embedding",)
    save_classifier(tmp_path / "embedding.joblib", model)
    loaded = load_classifier(tmp_path / "embedding.joblib")
    router = ClassifierRouter(loaded, ("small", "frontier"), (0.5,))
    easy = router.decide_now("What is 3 plus 5?")
    hard = router.decide_now("Prove that every group of order 49 is abelian.")
    assert easy.score is not None and hard.score is not None and easy.score < hard.score
