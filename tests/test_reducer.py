"""The reducer's output pinned to the byte on SQLite and PostgreSQL: which rows are kept and
why the others are not, the exact JSONL lines (key order, separators, unescaped unicode), the
validation split, the sha256, the warnings, and a format error in our own output. The
expected lines are built here from the rules, not by the reducer's own functions.
Then its pure pieces on their own: the filters, the system prompt, the split's fraction."""

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models import Job, JobMode, JobStatus, Prompt, PromptStatus, TrainingFile
from tests.helpers.services import make_engine
from workers.finetune_format import check_file
from workers.reducer import Filters, ReduceError, Reduction, Row, build_example, reduce_job
from workers.reducer import in_validation as reducer_in_validation
from workers.settings import ReducerConfig

SYSTEM = "Sé bref — « concis »."
ANSWER = "La photosynthèse convertit la lumière en énergie chimique 🌱, dans les chloroplastes."
OTHER = "Binary search halves the interval each step, so it needs about log2(n) comparisons."
CONFIG = ReducerConfig(max_example_tokens=60)  # min_length 50 and the default refusals


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def store_job(engine: Engine, rows: list[tuple[list[dict[str, Any]], str | None]]) -> int:
    """A finished teacher job with the given (messages, response) rows; no response = failed."""
    with Session(engine) as session:
        job = Job(mode=JobMode.TEACHER, status=JobStatus.FINISHED, total=len(rows))
        job.params = {"tier": "frontier", "system_prompt": SYSTEM}
        session.add(job)
        session.flush()
        assert job.id is not None
        for idx, (messages, response) in enumerate(rows):
            status = PromptStatus.FAILED if response is None else PromptStatus.SUCCEEDED
            session.add(
                Prompt(job_id=job.id, idx=idx, messages=messages, status=status, response=response)
            )
        session.commit()
        return job.id


def line(*messages: tuple[str, str]) -> str:
    example = {"messages": [{"role": role, "content": content} for role, content in messages]}
    return json.dumps(example, ensure_ascii=False) + "\n"


def reduce(engine: Engine, job_id: int, out: Path, config: ReducerConfig = CONFIG) -> Reduction:
    return reduce_job(engine=engine, job_id=job_id, out=out, config=config)


MIXED_ROWS: list[tuple[list[dict[str, Any]], str | None]] = [
    (user("Qu'est-ce que la photosynthèse ? 🌿"), f"  {ANSWER}\n"),  # kept, stripped
    (user("Fails."), None),  # no_answer
    (user("Blank."), " \n\t "),  # no_answer
    (user("Forbidden."), "i'M SORRY, but I cannot help with that request, not even a bit."),
    (user("Short."), "OK."),  # too_short
    (
        [{"role": "developer", "content": "Réponds en français."}, *user("Pourquoi ?")],
        ANSWER,  # kept: the developer message becomes the system one, no SYSTEM added
    ),
    ([{"role": "system", "content": "Be exact."}, *user("How?")], OTHER),  # kept, own system
    (user("Qu'est-ce que la photosynthèse ? 🌿"), ANSWER),  # duplicate of the first
    (user("word " * 200), OTHER),  # too_long
    (user("word " * 200), OTHER),  # too_long again: counted as such, not as a duplicate
    (user("Qu'est-ce que la photosynthèse ? 🌿"), ANSWER + " Encore."),  # kept: another answer
]

MIXED_TRAIN = (
    line(("system", SYSTEM), ("user", "Qu'est-ce que la photosynthèse ? 🌿"), ("assistant", ANSWER))
    + line(("system", "Réponds en français."), ("user", "Pourquoi ?"), ("assistant", ANSWER))
    + line(("system", "Be exact."), ("user", "How?"), ("assistant", OTHER))
    + line(
        ("system", SYSTEM),
        ("user", "Qu'est-ce que la photosynthèse ? 🌿"),
        ("assistant", ANSWER + " Encore."),
    )
)


def test_kept_rejected_and_the_exact_bytes(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    job_id = store_job(engine, MIXED_ROWS)
    out = tmp_path / "out" / "train.jsonl"

    result = reduce(engine, job_id, out)

    data = out.read_bytes()
    assert data == MIXED_TRAIN.encode()
    assert "🌱".encode() in data  # written as UTF-8, not as \\u escapes
    record = result.record
    assert record.examples == 4 and record.validation_examples == 0
    assert record.validation_path is None and not (tmp_path / "out/train.validation.jsonl").exists()
    rejected = {"no_answer": 2, "refusal": 1, "too_short": 1, "too_long": 2, "duplicate": 1}
    assert record.rejected == rejected
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.path == str(out.resolve())
    assert not list(out.parent.glob("*.tmp"))
    # The same warnings check_file gives for the file (it is checked as it is written).
    warning = f"{out}: 4 examples; OpenAI fine-tuning needs at least 10"
    assert result.warnings == [warning] == check_file(out).warnings
    assert check_file(out).errors == []


def test_the_automatic_reduce_records_one_file_however_many_run(
    database_url: str, tmp_path: Path
) -> None:
    """A re-sent reduce message can run beside the first: every copy writes the same bytes
    under its own temporary name, and one row is kept."""
    engine = make_engine(database_url)
    job_id = store_job(engine, MIXED_ROWS)
    out = tmp_path / "train.jsonl"

    def once() -> Reduction:
        return reduce_job(engine=engine, job_id=job_id, out=out, config=CONFIG, once=True)

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda _: once(), range(4)))
    after = once()

    with Session(engine) as session:
        rows = session.exec(select(TrainingFile).where(TrainingFile.job_id == job_id)).all()
    assert len(rows) == 1
    assert {r.record.id for r in [*together, after]} == {rows[0].id}
    assert out.read_bytes() == MIXED_TRAIN.encode()
    assert not list(tmp_path.glob("*.tmp"))


def test_without_the_system_prompt(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    job_id = store_job(engine, MIXED_ROWS[:1])
    config = CONFIG.model_copy(update={"include_system_prompt": False})

    reduce(engine, job_id, tmp_path / "train.jsonl", config)

    expected = line(("user", "Qu'est-ce que la photosynthèse ? 🌿"), ("assistant", ANSWER))
    assert (tmp_path / "train.jsonl").read_text(encoding="utf-8") == expected


def in_validation(job_id: int, idx: int, fraction: float) -> bool:
    """The documented split, computed independently of the reducer's code."""
    digest = hashlib.sha256(f"{job_id}:{idx}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def test_validation_split(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    questions = [f"Question n° {i} — pourquoi ?" for i in range(40)]
    job_id = store_job(engine, [(user(q), f"{OTHER} ({i})") for i, q in enumerate(questions)])
    out = tmp_path / "train.jsonl"

    result = reduce(engine, job_id, out, CONFIG.model_copy(update={"validation_fraction": 0.3}))

    lines = [
        line(("system", SYSTEM), ("user", q), ("assistant", f"{OTHER} ({i})"))
        for i, q in enumerate(questions)
    ]
    picked = [in_validation(job_id, i, 0.3) for i in range(40)]
    assert 0 < sum(picked) < 40  # both files have lines, or the test proves little
    train = "".join(text for text, valid in zip(lines, picked, strict=True) if not valid)
    valid = "".join(text for text, valid in zip(lines, picked, strict=True) if valid)
    validation = tmp_path / "train.validation.jsonl"
    assert out.read_text(encoding="utf-8") == train
    assert validation.read_text(encoding="utf-8") == valid
    record = result.record
    assert (record.examples, record.validation_examples) == (40 - sum(picked), sum(picked))
    assert record.validation_path == str(validation.resolve())
    assert record.sha256 == hashlib.sha256(train.encode()).hexdigest()
    assert record.rejected == {}
    assert result.warnings == [] == check_file(out).warnings


def test_our_output_breaking_the_format_fails(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    tool = [*user("Weather?"), {"role": "tool", "content": "sunny"}]
    rows = [(user(f"Fine question {i}?"), f"{OTHER} {i}") for i in range(3)] + [(tool, OTHER)]
    job_id = store_job(engine, rows)
    out = tmp_path / "train.jsonl"

    with pytest.raises(ReduceError) as failed:
        reduce(engine, job_id, out)

    assert str(failed.value) == (
        "training file failed the format check:\n"
        f"{out}:4: invalid message {{'role': 'tool', 'content': 'sunny'}}"
    )
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4  # as check_file read it
    with Session(engine) as session:
        assert session.exec(select(TrainingFile)).all() == []  # no row for a broken file


def row(response: str | None, status: str = "succeeded", idx: int = 0) -> Row:
    return Row(idx, status, [{"role": "user", "content": f"question {idx}"}], response)


def test_reducer_filters() -> None:
    filters = Filters(ReducerConfig(min_length=10, max_example_tokens=50))
    long_answer = "A fine answer, long enough."

    def reason(r: Row) -> str | None:
        return filters.reject_reason(r, build_example(r, None))

    assert reason(row(None, "failed")) == "no_answer"
    assert reason(row("I'm sorry, I can't do that")) == "refusal"
    assert reason(row("short")) == "too_short"
    assert reason(row("word " * 300)) == "too_long"
    assert reason(row(long_answer)) is None
    assert reason(row(long_answer)) == "duplicate"
    assert reason(row(long_answer, idx=1)) is None  # another question: not a duplicate


def test_example_carries_system_prompt_unless_the_prompt_has_one() -> None:
    example = build_example(row("answer"), "Be brief.")
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    own = Row(
        0,
        "succeeded",
        [{"role": "developer", "content": "x"}, {"role": "user", "content": "q"}],
        "a",
    )
    assert [m["role"] for m in build_example(own, "Be brief.")["messages"]] == [
        "system",
        "user",
        "assistant",
    ]


def test_validation_split_is_deterministic_and_near_the_fraction() -> None:
    picks = [reducer_in_validation(7, i, 0.1) for i in range(10_000)]
    assert picks == [reducer_in_validation(7, i, 0.1) for i in range(10_000)]
    assert 0.08 < sum(picks) / len(picks) < 0.12
