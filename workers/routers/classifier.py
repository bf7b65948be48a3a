"""The trained router: a text classifier's predicted difficulty, cut into tiers by the
configured thresholds.

The file is what `training.train_classifier` writes: a joblib dict holding a scikit-learn
pipeline whose classes are difficulty steps (0 easy, 1 medium, 2 hard), so the score is
the expected difficulty whether it was trained on two levels or three.

joblib files are pickles: loading one runs code from it. Load only files you trained.
"""

import asyncio
import os
import tempfile
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from workers.routers.base import Decision, RouterError, elapsed_ms, tier_for_score
from workers.routers.features import DEFAULT_FEATURES, VocabularyNovelty, require_features

FILE_VERSION = 1
KINDS = ("binary", "levels")  # two difficulty levels present in training, or three
HARDEST_STEP = 2  # steps 0, 1, 2 ↔ difficulty 0, 0.5, 1
TRAIN_COMMAND = "distillery router train LABELED.csv --out {path}"


class DifficultyModel:
    """A fitted pipeline plus where it came from; `score` is the batch entry point."""

    def __init__(
        self,
        pipeline: Any,
        *,
        kind: str,
        trained_on: str,
        rows: int,
        features: Sequence[str] = DEFAULT_FEATURES,
        platt: tuple[float, float] | None = None,
        novelty: VocabularyNovelty | None = None,
        novelty_threshold: float | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.kind = kind
        self.trained_on = trained_on
        self.rows = rows
        self.features = tuple(features)
        self.platt = platt  # (slope, intercept) on the raw score; None: raw scores
        self.novelty = novelty  # how unlike the training prompts a prompt is
        self.novelty_threshold = novelty_threshold  # above it: out of distribution
        self._step_values = np.asarray(pipeline.classes_, dtype=float) / HARDEST_STEP

    def raw_score(self, texts: Sequence[str]) -> np.ndarray:
        """The pipeline's expected difficulty in [0, 1] (uncalibrated)."""
        probabilities = self.pipeline.predict_proba(list(texts))
        return np.clip(probabilities @ self._step_values, 0.0, 1.0)

    def score(self, texts: Sequence[str]) -> list[float]:
        """Difficulty in [0, 1] for each text (one vectorised pass for all): with Platt
        scaling, the held-out probability that the prompt needs the last tier."""
        if not texts:
            return []
        return [float(value) for value in self.calibrated(self.raw_score(texts))]

    def calibrated(self, raw: np.ndarray) -> np.ndarray:
        if self.platt is None:
            return raw
        slope, intercept = self.platt
        return 1.0 / (1.0 + np.exp(-(slope * raw + intercept)))

    def out_of_distribution(self, texts: Sequence[str]) -> list[bool]:
        """Whether each prompt is further from the training data than the threshold chosen
        on held-out in-domain prompts (all False for a file trained without one)."""
        if self.novelty is None or self.novelty_threshold is None:
            return [False] * len(texts)
        return [bool(v > self.novelty_threshold) for v in self.novelty.score(texts)]

    def to_file_dict(self) -> dict[str, Any]:
        return {
            "version": FILE_VERSION,
            "kind": self.kind,
            "pipeline": self.pipeline,
            "trained_on": self.trained_on,
            "rows": self.rows,
            "features": list(self.features),
            "platt": None if self.platt is None else list(self.platt),
            "novelty_words": None if self.novelty is None else sorted(self.novelty.known),
            "novelty_threshold": self.novelty_threshold,
        }


class ClassifierRouter:
    name = "classifier"

    def __init__(
        self,
        model: DifficultyModel,
        tiers: Sequence[str],
        thresholds: Sequence[float],
        *,
        defer: bool = True,
    ) -> None:
        self.model = model
        self.tiers = tuple(tiers)
        self.thresholds = tuple(thresholds)
        self.defer = defer  # out-of-distribution prompts go to the cascade's first tier
        tier_for_score(self.tiers, 0.0, self.thresholds)  # bad thresholds fail here, not later

    async def decide(self, text: str) -> Decision:
        # A prediction is CPU work (~1 ms): off the event loop, where calls are in flight.
        return await asyncio.to_thread(self.decide_now, text)

    def decide_now(self, text: str) -> Decision:
        return self.decisions([text])[0]

    def decisions(self, texts: Sequence[str]) -> list[Decision]:
        """One vectorised pass. A prompt unlike the training data is *deferred*: sent to the
        cheapest tier, where the cascade's confidence decides whether it escalates, instead
        of trusting a score the router has no grounds for."""
        started = time.perf_counter()
        scores = self.model.score(texts)
        novel = self.model.out_of_distribution(texts) if self.defer else [False] * len(texts)
        per_prompt = elapsed_ms(started) / max(1, len(texts))
        return [
            Decision(
                tier=self.tiers[0] if far else tier_for_score(self.tiers, score, self.thresholds),
                score=score,
                latency_ms=per_prompt,
                deferred=far,
            )
            for score, far in zip(scores, novel, strict=True)
        ]

    def score(self, texts: Sequence[str]) -> list[float]:
        return self.model.score(texts)


def save_classifier(
    path: Path,
    model: DifficultyModel,
    *,
    thresholds: Sequence[float] | None = None,
    calibration: dict[str, Any] | None = None,
) -> None:
    """Written beside the target and renamed into place, so a worker loading the file while
    it is being retrained sees the old model or the new one, never half of one.
    `thresholds` (chosen at training time) are stored as `router calibrate` stores them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = model.to_file_dict()
    if thresholds is not None:
        data["thresholds"] = list(thresholds)
        data["calibration"] = calibration or {}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        joblib.dump(data, temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; workers may run as another user
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_classifier(path: str | Path) -> DifficultyModel:
    """The model in `path`; RouterError, naming the command that makes one, when the file is
    missing or is not a classifier file. Cached until the file changes."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise RouterError(
            f"classifier file {path} not found; train one with: {_train_command(path)}"
        ) from None
    except OSError as exc:
        raise RouterError(f"classifier file {path} cannot be read: {exc.strerror}") from None
    return _load_cached(path.resolve(), path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load_cached(resolved: Path, shown: Path, _mtime_ns: int, _size: int) -> DifficultyModel:
    # mtime and size are in the key so that a retrained file is loaded afresh
    try:
        data = joblib.load(resolved)
    except Exception as exc:  # unpickling can fail in many ways; all mean "not usable"
        raise _invalid(shown, f"{type(exc).__name__}: {exc}") from None
    return _model_from(shown, data)


def _model_from(path: Path, data: Any) -> DifficultyModel:
    if not isinstance(data, dict) or "pipeline" not in data:
        raise _invalid(path, "it does not hold a Distillery router classifier")
    if data.get("version") != FILE_VERSION:
        raise _invalid(path, f"file version {data.get('version')!r}, expected {FILE_VERSION}")
    pipeline = data["pipeline"]
    if not hasattr(pipeline, "predict_proba") or not hasattr(pipeline, "classes_"):
        raise _invalid(path, "its pipeline is not a fitted probabilistic classifier")
    if data.get("kind") not in KINDS:
        raise _invalid(path, f"unknown kind {data.get('kind')!r}")
    features = tuple(data.get("features") or DEFAULT_FEATURES)
    try:
        require_features(features)
    except RouterError as exc:
        raise RouterError(f"classifier file {path}: {exc}") from None
    platt = data.get("platt")
    words = data.get("novelty_words")
    return DifficultyModel(
        pipeline,
        kind=str(data["kind"]),
        trained_on=str(data.get("trained_on", "")),
        rows=int(data.get("rows", 0)),
        features=features,
        platt=None if platt is None else (float(platt[0]), float(platt[1])),
        novelty=None if words is None else VocabularyNovelty(frozenset(words)),
        novelty_threshold=data.get("novelty_threshold"),
    )


def _invalid(path: Path, reason: str) -> RouterError:
    return RouterError(
        f"classifier file {path} is not usable ({reason}); train one with: {_train_command(path)}"
    )


def _train_command(path: Path) -> str:
    return TRAIN_COMMAND.format(path=path)
