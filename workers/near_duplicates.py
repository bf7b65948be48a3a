"""Near-duplicate detection for the reducer: MinHash signatures of each row's normalised text
(5-byte shingles, hashed with numpy by workers.quality.shingle_hashes), indexed with
datasketch's MinHash-LSH.

A row whose signature the index returns as a candidate, and whose estimated Jaccard
similarity with that earlier row is at or above the threshold, duplicates it; the earliest
such row is the one named. Candidates are checked against the signatures kept here
(uint32, num_perm of them per row: 26 MB per 100,000 rows at the default 64), because LSH
alone also returns pairs somewhat below the threshold."""

from collections.abc import Iterable
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH

from workers.quality import shingle_hashes

SEED = 1  # every run, every process: the same permutations, so the same verdicts
_GROW = 4096


class NearDuplicateIndex:
    def __init__(self, threshold: float, num_perm: int = 64) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"a near-duplicate threshold is in (0, 1], not {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        # The index only proposes candidates, each then checked against the threshold: set a
        # little below it, it misses fewer true pairs (recall), and the check keeps precision.
        # Above 0.9 datasketch would pick a single band, which it refuses.
        lsh_threshold = min(max(threshold - 0.05, 0.05), 0.9)
        self._lsh = MinHashLSH(threshold=lsh_threshold, num_perm=num_perm)
        # The permutations, drawn once and shared by every signature. The shingles come
        # hashed already (shingle_hashes), so datasketch's hash function is the identity;
        # it mixes the values with a murmur finaliser before permuting them.
        first = MinHash(num_perm=num_perm, seed=SEED, hashfunc=int)
        self._permutations, self._scheme = first.permutations, first.scheme
        self._signatures = np.empty((0, num_perm), dtype=np.uint32)
        self._keys: list[int] = []

    def signature(self, texts: Iterable[str]) -> MinHash | None:
        """The MinHash of the texts' shingles together; None when they hold no words."""
        hashes = [shingle_hashes(text) for text in texts]
        grams = hashes[0] if len(hashes) == 1 else np.concatenate(hashes)
        if not len(grams):
            return None
        return MinHash(
            num_perm=self.num_perm,
            seed=SEED,
            hashfunc=int,
            hashvalues=self.hashvalues(grams),
            permutations=self._permutations,
            scheme=self._scheme,
        )

    def hashvalues(self, grams: "np.ndarray[Any, np.dtype[np.uint32]]") -> Any:
        """What datasketch's `MinHash.update_batch(grams.tolist())` computes with the
        identity hash function (the murmur3 finaliser, then the affine permutations mod
        2^32, then the minimum per permutation), as one numpy expression over the array:
        update_batch calls the hash function once per shingle in Python, which was most of
        the reducer's time. tests/test_near_duplicates.py checks the two agree."""
        a, b = self._permutations
        mixed = _fmix32(grams.astype(np.uint32))
        return (mixed[:, None] * a + b).min(axis=0)

    def match(self, minhash: MinHash) -> tuple[int, float] | None:
        """(key of the earliest indexed row this one near-duplicates, estimated Jaccard)."""
        candidates = self._lsh.query(minhash)
        if not candidates:
            return None
        positions = np.array(sorted(candidates), dtype=np.int64)
        mine = minhash.hashvalues.astype(np.uint32)
        similar = (self._signatures[positions] == mine).mean(axis=1)
        hits = np.flatnonzero(similar >= self.threshold)
        if not len(hits):
            return None
        first = hits[0]
        return self._keys[positions[first]], float(similar[first])

    def add(self, key: int, minhash: MinHash) -> None:
        position = len(self._keys)
        if position == len(self._signatures):
            grown = np.empty((position + max(_GROW, position // 2), self.num_perm), np.uint32)
            grown[:position] = self._signatures
            self._signatures = grown
        self._signatures[position] = minhash.hashvalues
        self._keys.append(key)
        self._lsh.insert(position, minhash, check_duplication=False)

    def __len__(self) -> int:
        return len(self._keys)


def _fmix32(values: "np.ndarray[Any, np.dtype[np.uint32]]") -> Any:
    """MurmurHash3's 32-bit finaliser, as datasketch applies it before permuting."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))
