"""The validation split: deterministic, optionally stratified by a metadata field, and
without leakage — no validation example whose prompt near-duplicates a training example's.

Unstratified, a row is in validation when the hash of (job id, idx) falls under the
fraction (the same rows whatever else changes). Stratified, each value of the field gets
its share exactly: the k-th kept row of a value goes to validation when k * fraction
crosses a whole number (floor(n * fraction) rows of n, in input order).

Validation candidates are held until every training row is known; then each whose prompt
has a training prompt at or above `leakage_threshold` (MinHash-LSH, estimated Jaccard)
moves to training, until none is left (a moved row can make another one leak).
"""

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from datasketch import MinHash

from models.training_data import AnswerRow
from workers.near_duplicates import NearDuplicateIndex
from workers.settings import ReducerConfig

NO_VALUE = "(none)"


def in_validation(job_id: int, idx: int, fraction: float) -> bool:
    """A stable split: the same job always puts the same rows in validation."""
    digest = hashlib.sha256(f"{job_id}:{idx}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def stratum_of(row: AnswerRow, field_name: str) -> str:
    try:
        meta = json.loads(row.metadata) if row.metadata else None
    except ValueError:
        meta = None
    value = meta.get(field_name) if isinstance(meta, dict) else None
    return NO_VALUE if value is None else str(value)


@dataclass
class Held:
    """A validation candidate: written once the leakage check has passed it."""

    line: bytes
    example: dict[str, Any]
    stratum: str
    signature: MinHash | None


@dataclass
class Split:
    job_id: int
    config: ReducerConfig
    held: list[Held] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    train_strata: Counter[str] = field(default_factory=Counter)
    moved: int = 0
    prompts: NearDuplicateIndex | None = None

    def __post_init__(self) -> None:
        if self.config.validation_fraction > 0:
            self.prompts = NearDuplicateIndex(
                self.config.leakage_threshold, self.config.minhash_permutations
            )

    @property
    def active(self) -> bool:
        return self.prompts is not None

    def stratum(self, row: AnswerRow) -> str:
        field_name = self.config.stratify_by
        return stratum_of(row, field_name) if field_name else NO_VALUE

    def to_validation(self, row: AnswerRow, stratum: str) -> bool:
        fraction = self.config.validation_fraction
        if fraction <= 0:
            return False
        if not self.config.stratify_by:
            return in_validation(self.job_id, row.idx, fraction)
        k = self.seen[stratum]
        self.seen[stratum] += 1
        return math.floor((k + 1) * fraction) > math.floor(k * fraction)

    def signature(self, prompt: str) -> MinHash | None:
        return self.prompts.signature([prompt]) if self.prompts is not None else None

    def trained(self, stratum: str, signature: MinHash | None) -> None:
        """A row went to training: later validation candidates are checked against it."""
        self.train_strata[stratum] += 1
        if self.prompts is not None and signature is not None:
            self.prompts.add(len(self.prompts), signature)

    def settle(self) -> tuple[list[Held], list[Held]]:
        """(rows moved to training for leaking, rows that stay in validation)."""
        moved: list[Held] = []
        remaining = self.held
        while True:
            leaking = [h for h in remaining if self._leaks(h)]
            if not leaking:
                break
            for held in leaking:
                self.trained(held.stratum, held.signature)
            moved += leaking
            gone = {id(h) for h in leaking}
            remaining = [h for h in remaining if id(h) not in gone]
        self.moved = len(moved)
        return moved, remaining

    def _leaks(self, held: Held) -> bool:
        if self.prompts is None or held.signature is None:
            return False
        return self.prompts.match(held.signature) is not None

    def report(self, validation: list[Held], train_lines: int) -> dict[str, Any]:
        valid_strata = Counter(h.stratum for h in validation)
        summary: dict[str, Any] = {
            "train": train_lines,
            "validation": len(validation),
            "validation_fraction": self.config.validation_fraction,
            "stratify_by": self.config.stratify_by,
            "leakage": {
                "checked": len(self.held),
                "moved_to_train": self.moved,
                "threshold": self.config.leakage_threshold,
                "field": "prompt",
            },
        }
        if self.config.stratify_by:
            strata = sorted(set(self.train_strata) | set(valid_strata))
            summary["strata"] = {
                s: {"train": self.train_strata[s], "validation": valid_strata[s]} for s in strata
            }
        return summary
