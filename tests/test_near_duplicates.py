"""Near-duplicate detection measured on real text: 1,000 MMLU questions from the shared data,
and 300 planted copies of some of them changed the ways a teacher job repeats itself
(whitespace, punctuation, casing, one changed word, or several of these at once). The
reducer must find the planted copies (recall >= 0.95) and flag little else (precision
>= 0.99). A flagged row that is not planted still counts as right when its exact Jaccard
similarity (over the same shingles) with the row it names reaches the threshold: MMLU has
near-identical questions of its own."""

import csv
import random
from pathlib import Path

from sqlmodel import Session, select

from models import Prompt
from models.tables import Rejection
from tests.helpers.services import make_engine, shared_data
from tests.test_training_data_quality import store_job
from workers.quality import jaccard, normalise_text, shingle_hashes
from workers.reducer import reduce_job
from workers.settings import ReducerConfig

THRESHOLD = 0.85
BASE, PLANTED = 1000, 300
ANSWER = "A long enough answer for the reducer to keep, numbered so that none is equal: {}."


def base_texts() -> list[str]:
    with shared_data("mmlu_routing.csv").open(encoding="utf-8") as handle:
        prompts = [row["prompt"] for row in csv.DictReader(handle)]
    seen: set[str] = set()
    texts = []
    for text in prompts:
        norm = normalise_text(text)
        if len(norm) >= 200 and norm not in seen:  # long enough for one word to matter less
            seen.add(norm)
            texts.append(text)
    return random.Random(17).sample(texts, BASE)


def change_whitespace(text: str, rng: random.Random) -> str:
    return "  ".join(text.split(" ")).replace("\n", " \n\n ") + "   "


def change_punctuation(text: str, rng: random.Random) -> str:
    return text.replace(",", "").replace(".", " ;").replace("?", "?!")


def change_case(text: str, rng: random.Random) -> str:
    return text.upper() if rng.random() < 0.5 else text.lower()


def change_one_word(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    at = rng.randrange(len(words))
    words[at] = rng.choice(["banana", "quickly", "seventeen", "however", "blue"])
    return " ".join(words)


CHANGES = [change_whitespace, change_punctuation, change_case, change_one_word]


def planted_copy(text: str, rng: random.Random) -> str:
    picked = rng.sample(CHANGES, rng.randint(1, len(CHANGES)))
    for change in picked:
        text = change(text, rng)
    return text


def test_planted_near_duplicates_found_with_high_recall_and_precision(
    database_url: str, tmp_path: Path
) -> None:
    rng = random.Random(2026)
    texts = base_texts()
    rows = [{"prompt": text} for text in texts]
    planted: dict[int, int] = {}  # row idx of a copy: idx of its original
    for _ in range(PLANTED):
        original = rng.randrange(BASE)
        planted[len(rows)] = original
        rows.append({"prompt": planted_copy(texts[original], rng)})
    for n, row in enumerate(rows):
        row["response"] = ANSWER.format(n)
    engine = make_engine(database_url)
    job_id = store_job(engine, rows)
    config = ReducerConfig(near_duplicates=THRESHOLD, near_duplicate_field="prompt")

    result = reduce_job(engine=engine, job_id=job_id, out=tmp_path / "t.jsonl", config=config)

    with Session(engine) as session:
        idx_of = {p.id: p.idx for p in session.exec(select(Prompt)).all()}
        flagged = {
            idx_of[r.prompt_id]: idx_of[r.duplicate_of]
            for r in session.exec(select(Rejection)).all()
            if r.reason == "near_duplicate" and r.duplicate_of is not None
        }
    prompts = [row["prompt"] for row in rows]

    def truly_similar(idx: int, other: int) -> bool:
        return jaccard(shingle_hashes(prompts[idx]), shingle_hashes(prompts[other])) >= THRESHOLD

    found = [idx for idx in planted if idx in flagged]
    right = [
        idx
        for idx, other in flagged.items()
        if planted.get(idx) == other or truly_similar(idx, other)
    ]
    recall = len(found) / len(planted)
    precision = len(right) / len(flagged)
    print(f"recall {recall:.3f} precision {precision:.3f} ({len(flagged)} flagged)")
    assert recall >= 0.95
    assert precision >= 0.99
    assert result.record.rejected.get("near_duplicate") == len(flagged)


def test_signatures_are_datasketchs_own() -> None:
    """The index computes signatures in one numpy expression; they must be exactly what
    datasketch's MinHash.update_batch computes for the same shingles."""
    from datasketch import MinHash

    from workers.near_duplicates import SEED, NearDuplicateIndex

    index = NearDuplicateIndex(0.85)
    for text in ["A short one.", "Ünïcödé 🧪 text, with marks\u0301 and RTL: مرحبا", "x" * 3000]:
        ours = index.signature([text])
        assert ours is not None
        theirs = MinHash(num_perm=index.num_perm, seed=SEED, hashfunc=int)
        theirs.update_batch(shingle_hashes(text).tolist())
        assert (ours.hashvalues == theirs.hashvalues).all()
        assert ours.jaccard(theirs) == 1.0
