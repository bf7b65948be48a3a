"""Training data worth learning from (issue 17), on SQLite and PostgreSQL: truncated answers,
refusals phrased many ways, degenerate loops and junk, near-duplicates with the row they
repeat, every rejection queryable (`results --rejected`), a re-reduce with other settings,
the split (deterministic, stratified, no prompt leakage into validation) and the bad inputs.
The expected rows are worked out here from the rules, not by the reducer's own code."""

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from models import Attempt, Job, JobMode, JobStatus, Prompt, PromptStatus
from models.tables import Rejection
from tests.helpers.cli import invoke, use_config_text
from tests.helpers.services import make_engine
from workers.quality import is_refusal, non_text_fraction, normalise_phrases, repeat_fraction
from workers.reducer import Reduction, reduce_job
from workers.settings import DEFAULT_REFUSAL_PHRASES, ReducerConfig

SYSTEM = "Answer well."
PROSE = (
    "Photosynthesis turns light into chemical energy inside the chloroplasts of plant cells, "
    "where chlorophyll absorbs mostly red and blue light and water is split to release oxygen."
)
OTHER = (
    "Binary search halves the interval on every step, so a sorted list of a million items "
    "needs about twenty comparisons before the item is found or known to be absent."
)
THIRD = (
    "A hash table maps keys to buckets with a hash function, so lookups take constant time "
    "on average, although collisions must be resolved by chaining or by open addressing."
)
CONFIG = ReducerConfig(min_length=20)


def store_job(engine: Engine, rows: list[dict[str, Any]]) -> int:
    """A finished teacher job; each row: prompt, response (None: failed), finish, metadata."""
    with Session(engine) as session:
        job = Job(mode=JobMode.TEACHER, status=JobStatus.FINISHED, total=len(rows))
        job.params = {"tier": "frontier", "system_prompt": SYSTEM}
        session.add(job)
        session.flush()
        assert job.id is not None
        for idx, row in enumerate(rows):
            response = row.get("response")
            session.add(
                Prompt(
                    job_id=job.id,
                    idx=idx,
                    messages=[{"role": "user", "content": row["prompt"]}],
                    status=PromptStatus.FAILED if response is None else PromptStatus.SUCCEEDED,
                    response=response,
                    finish_reason=row.get("finish", "stop" if response else None),
                    meta=row.get("metadata"),
                )
            )
        session.commit()
        return job.id


def reduce(
    engine: Engine, job_id: int, out: Path, config: ReducerConfig = CONFIG, **changes: Any
) -> Reduction:
    config = config.model_copy(update=changes)
    return reduce_job(engine=engine, job_id=job_id, out=out, config=config)


def read_lines(path: Path | str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def rejections(engine: Engine, training_file_id: int | None) -> dict[int, tuple[str, int | None]]:
    """idx: (reason, idx of the row it duplicates)."""
    with Session(engine) as session:
        ids = {p.id: p.idx for p in session.exec(select(Prompt)).all()}
        rows = session.exec(
            select(Rejection).where(Rejection.training_file_id == training_file_id)
        ).all()
        return {
            ids[r.prompt_id]: (r.reason, ids[r.duplicate_of] if r.duplicate_of else None)
            for r in rows
        }


# --------------------------------------------------------------------------- the rules


def test_refusals_in_the_first_sentence_any_case_any_apostrophe() -> None:
    phrases = normalise_phrases(DEFAULT_REFUSAL_PHRASES)
    refusals = [
        "As an AI language model, I do not have opinions.",
        "I CAN'T HELP WITH THAT REQUEST.",
        "I\u2019m unable to share that information.",  # a curly apostrophe
        "Sorry — I cannot assist with this one. Try a search engine.",
        "  i am not able to do that, because it is unsafe.",
    ]
    answers = [
        f"{PROSE} As an AI would say, I can't help noticing it.",  # past the first sentence
        "Cannot-fail circuits are rare. I'm unable to find one.",
        PROSE,
    ]
    assert all(is_refusal(text, phrases) for text in refusals)
    assert not any(is_refusal(text, phrases) for text in answers)
    assert is_refusal("Nope, not doing that.", normalise_phrases(["NOT DOING THAT"]))


def test_loops_and_junk_have_their_own_measure() -> None:
    loop = "The answer is the answer. " * 12
    assert repeat_fraction(loop) > 0.8
    assert repeat_fraction(PROSE + " " + OTHER) < 0.05
    assert repeat_fraction("short short short short") == 0.0  # too short to tell
    assert non_text_fraction(PROSE) == 0.0
    assert non_text_fraction("مرحبا بالعالم، هذا نص عربي. שלום עולם") == 0.0  # RTL text is text
    assert non_text_fraction("Cafe\u0301 au lait, s'il vous plai\u0302t.") == 0.0  # combining
    assert non_text_fraction("🎉🎉🎉🎉🎉🎉 ok") > 0.5
    assert non_text_fraction("data: " + "QUJD" * 40) > 0.9  # a base64 blob
    assert non_text_fraction("x = (a + b) * c; if x > 0: return x") == 0.0  # code is text
    assert non_text_fraction('{"a": 1, "b": [2, 3]}') == 0.0  # and JSON
    assert non_text_fraction("### >>> ~~~ ||| ***") == 1.0  # no word at all


# --------------------------------------------------------------- the reducer end to end

ROWS: list[dict[str, Any]] = [
    {"prompt": "What is photosynthesis?", "response": PROSE},  # 0 kept
    {"prompt": "Cut off?", "response": OTHER[:60], "finish": "length"},  # 1 truncated
    {"prompt": "Filtered?", "response": THIRD, "finish": "content_filter"},  # 2 truncated
    {"prompt": "Opinion?", "response": "As an AI, I don't hold opinions on politics."},  # 3
    {"prompt": "Loop?", "response": "I think that it is good. " * 10},  # 4 degenerate
    {"prompt": "Junk?", "response": "✨🔥💯" * 20 + " done"},  # 5 non_text
    {"prompt": "Binary search?", "response": OTHER},  # 6 kept
    {"prompt": "what is PHOTOSYNTHESIS", "response": PROSE.upper().replace(",", " ")},  # 7 near
    {"prompt": "Failed."},  # 8 no_answer
    {"prompt": "Hash tables?", "response": THIRD},  # 9 kept
    {"prompt": "What is photosynthesis?", "response": PROSE},  # 10 exact duplicate of 0
]
EXPECTED = {
    1: ("truncated", None),
    2: ("truncated", None),
    3: ("refusal", None),
    4: ("degenerate", None),
    5: ("non_text", None),
    7: ("near_duplicate", 0),
    8: ("no_answer", None),
    10: ("duplicate", 0),
}


def test_every_reason_recorded_with_the_row_it_duplicates(
    database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    job_id = store_job(engine, ROWS)

    result = reduce(engine, job_id, tmp_path / "train.jsonl", near_duplicates=0.85)

    kept = [line["messages"][-1]["content"] for line in read_lines(result.record.path)]
    assert kept == [PROSE, OTHER, THIRD]
    assert rejections(engine, result.record.id) == EXPECTED
    counts: dict[str, int] = {}
    for reason, _ in EXPECTED.values():
        counts[reason] = counts.get(reason, 0) + 1
    assert result.record.rejected == counts
    # Without near-duplicate detection the upper-cased copy is kept; truncated answers
    # can be kept on purpose; neither needs a model call.
    again = reduce(engine, job_id, tmp_path / "again.jsonl", truncated_finish_reasons=[])
    assert rejections(engine, again.record.id) == {
        k: v for k, v in EXPECTED.items() if v[0] not in ("near_duplicate", "truncated")
    }


def test_results_rejected_on_the_command_line(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(database_url)
    job_id = store_job(engine, ROWS)
    use_database(monkeypatch, tmp_path, database_url, "[reducer]\nmin_length = 20\n")
    before = attempt_count(engine)
    early = invoke("results", str(job_id), "--rejected")
    assert early.exit_code == 6 and f"distillery reduce {job_id}" in early.output

    reduced = invoke("reduce", str(job_id), "--near-duplicates", "0.85", "--json")
    assert reduced.exit_code == 0, reduced.output
    summary = json.loads(reduced.output)
    assert summary["rejected"]["near_duplicate"] == 1 and summary["examples"] == 3
    assert Path(summary["card_path"]).exists()

    shown = invoke("results", str(job_id), "--rejected", "--reason", "near_duplicate")
    assert shown.exit_code == 0, shown.output
    (row,) = [json.loads(line) for line in shown.output.splitlines()]
    assert (row["idx"], row["reason"], row["duplicate_of"]) == (7, "near_duplicate", 0)
    assert row["duplicate_response"] == PROSE and row["prompt"] == "what is PHOTOSYNTHESIS"

    every = invoke("results", str(job_id), "--rejected", "--format", "csv")
    assert every.output.splitlines()[0].startswith("idx,custom_id,reason,duplicate_of,score")
    assert len(every.output.splitlines()) == 1 + len(EXPECTED)
    assert attempt_count(engine) == before  # reducing and querying made no model call


def use_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, extra: str = ""
) -> None:
    """The CLI's config: this test's database, output under tmp_path."""
    top = f'database_url = "{database_url}"\noutput_dir = "{tmp_path / "output"}"\n'
    use_config_text(monkeypatch, tmp_path / "distillery.toml", top + extra)


def attempt_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(Attempt)).one()


# ------------------------------------------------------------------------- the split


def topic_rows(n: int) -> list[dict[str, Any]]:
    subjects = ["chemistry", "history", "music"]
    return [
        {
            "prompt": f"Tell me fact number {i} about {subjects[i % 3]}, in detail please.",
            "response": f"{PROSE} Fact {i}. {OTHER if i % 2 else THIRD}",
            "metadata": {"topic": subjects[i % 3]},
        }
        for i in range(n)
    ]


def test_stratified_split_takes_each_values_share(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    job_id = store_job(engine, topic_rows(60))
    config = CONFIG.model_copy(
        update={"validation_fraction": 0.2, "stratify_by": "topic", "leakage_threshold": 0.99}
    )

    first = reduce(engine, job_id, tmp_path / "a.jsonl", config)
    second = reduce(engine, job_id, tmp_path / "b.jsonl", config)

    split = first.record.details["split"]
    assert split["strata"] == {
        t: {"train": 16, "validation": 4} for t in ("chemistry", "history", "music")
    }
    assert (first.record.examples, first.record.validation_examples) == (48, 12)
    assert (
        Path(first.record.validation_path or "").read_bytes()
        == Path(second.record.validation_path or "").read_bytes()
    )  # deterministic


def test_no_near_duplicate_prompt_of_training_lands_in_validation(
    database_url: str, tmp_path: Path
) -> None:
    """The same question asked twice with another answer: whichever copy the split puts
    in validation moves to training, and the move is counted."""
    engine = make_engine(database_url)
    rows = []
    import random

    from simulator.vocabulary import WORDS

    rng = random.Random(7)
    for i in range(40):  # 40 questions unlike each other, each asked twice
        question = "Why does " + " ".join(rng.sample(WORDS, 8)) + " matter?"
        rows.append({"prompt": question, "response": f"{PROSE} ({i})"})
        rows.append({"prompt": question.upper() + "!", "response": f"{OTHER} ({i})"})
    job_id = store_job(engine, rows)

    result = reduce(engine, job_id, tmp_path / "train.jsonl", validation_fraction=0.3)

    train = {
        m["messages"][1]["content"].casefold().rstrip("!") for m in read_lines(result.record.path)
    }
    valid = read_lines(result.record.validation_path or "")
    leakage = result.record.details["split"]["leakage"]
    assert leakage["moved_to_train"] > 0  # some pairs were split, or the test proves little
    assert not any(m["messages"][1]["content"].casefold().rstrip("!") in train for m in valid)
    assert result.record.examples + len(valid) == 80
    assert leakage["checked"] == len(valid) + leakage["moved_to_train"]


# ----------------------------------------------------------------------- bad inputs


def test_a_job_with_no_prompts_and_one_with_every_answer_rejected(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(database_url)
    empty = store_job(engine, [])
    refused = store_job(
        engine, [{"prompt": f"q{i}", "response": "I can't help with that."} for i in range(3)]
    )
    use_database(monkeypatch, tmp_path, database_url)

    none = invoke("reduce", str(empty))
    assert none.exit_code == 3
    assert f"job {empty} has no answers to reduce" in none.output

    out = tmp_path / "refused.jsonl"
    all_out = invoke("reduce", str(refused), "--out", str(out))
    assert all_out.exit_code == 3
    assert "all 3 answers were left out (refusal 3)" in all_out.output
    assert f"distillery results {refused} --rejected" in all_out.output
    assert not out.exists() and not list(tmp_path.glob("refused*"))  # no empty file passed off
    shown = invoke("results", str(refused), "--rejected")
    assert [json.loads(line)["reason"] for line in shown.output.splitlines()] == ["refusal"] * 3


def test_a_threshold_outside_zero_one_and_an_unwritable_directory(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(database_url)
    job_id = store_job(engine, ROWS)
    use_database(monkeypatch, tmp_path, database_url)
    for bad in ("0", "1.5", "-0.2"):
        refused = invoke("reduce", str(job_id), "--near-duplicates", bad)
        assert refused.exit_code == 2 and "--near-duplicates" in refused.output
    with pytest.raises(ValueError, match="near_duplicates"):
        ReducerConfig(near_duplicates=0)

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: a file in the way instead
            locked.chmod(0o700)
            locked = tmp_path / "a-file"
            locked.write_text("in the way")
        failed = invoke("reduce", str(job_id), "--out", str(locked / "sub" / "train.jsonl"))
    finally:
        if locked.is_dir():
            locked.chmod(0o700)
    assert failed.exit_code == 6, failed.output
    assert "cannot write to" in failed.output and "--out DIR" in failed.output
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Rejection)).one() == 0


def test_finish_reason_is_stored_and_cut_off_answers_are_dropped(
    tmp_path: Path, sim: Any, database_url: str, workers: Any
) -> None:
    """Real workers, the simulator over HTTP: with max_tokens 90 the longer answers end with
    `length`; the attempt and the prompt both say so, and the reducer drops exactly those."""
    from tests.helpers.config import write_config
    from tests.helpers.pipeline import (
        attempts_of,
        prompts_of,
        submit_file,
        wait_for_job,
        wait_for_training_file,
        write_jsonl,
    )

    config = write_config(
        tmp_path / "distillery.toml",
        base_url=sim.base_url,
        database_url=database_url,
        extra="[teacher]\nmax_tokens = 90\n[reducer]\nmin_length = 0\n",
    )
    rows = [{"prompt": f"Explain idea {i} to a student."} for i in range(30)]
    workers.start(config, concurrency=4)
    job_id, engine, _ = submit_file(write_jsonl(tmp_path / "p.jsonl", rows), config)
    wait_for_job(engine, job_id, workers)

    prompts = prompts_of(engine, job_id)
    by_prompt = {a.prompt_id: a.finish_reason for a in attempts_of(engine, job_id)}
    assert {p.finish_reason for p in prompts} == {"stop", "length"}  # both kinds, or no test
    assert all(by_prompt[p.id] == p.finish_reason for p in prompts)
    record = wait_for_training_file(engine, job_id, workers)
    cut = sum(p.finish_reason == "length" for p in prompts)
    assert record.rejected == {"truncated": cut}
    assert record.examples == 30 - cut
