"""The reducer's exports on SQLite and PostgreSQL: OpenAI chat JSONL (format-checked), TRL
`messages` and prompt/completion JSONL, and Parquet read back with Hugging Face `datasets`
(`load_dataset("parquet", data_files=...)`), each with its dataset card; the text survives
byte for byte through RTL scripts, combining marks, emoji and U+2028/U+2029."""

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.services import make_engine
from tests.test_training_data_quality import SYSTEM, read_lines, store_job
from workers.reducer import reduce_job
from workers.settings import ReducerConfig

# Each answer is long enough to keep and unlike the others.
UNICODE_ROWS: list[dict[str, Any]] = [
    {
        "prompt": "اشرح التمثيل الضوئي",
        "response": "التمثيل الضوئي يحوّل ضوء الشمس إلى طاقة كيميائية في البلاستيدات الخضراء.",
    },
    {
        "prompt": "הסבר חיפוש בינארי",
        "response": "חיפוש בינארי חוצה את הטווח בכל צעד ולכן הוא מהיר מאוד ברשימה ממוינת.",
    },
    {
        "prompt": "Cafe\u0301 ?",
        "response": "Un cafe\u0301 noir, s'il vous plai\u0302t, "
        "avec des cre\u0300mes a\u0300 part.",
    },
    {
        "prompt": "Emoji 🧪?",
        "response": "Chemistry 🧪 mixes things 🔥 and writes it all down 📓 in a lab notebook.",
    },
    {
        "prompt": "Line\u2028separator?",
        "response": "First line\u2028second line\u2029a new paragraph, all in one answer.",
    },
]


def expected_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": row["prompt"]},
        {"role": "assistant", "content": row["response"]},
    ]


def reduce_as(database_url: str, tmp_path: Path, fmt: str, **changes: Any) -> Any:
    engine = make_engine(database_url)
    job_id = store_job(engine, UNICODE_ROWS)
    config = ReducerConfig(min_length=20, format=fmt, **changes)
    return reduce_job(engine=engine, job_id=job_id, out=f"{tmp_path}/out/", config=config)


@pytest.mark.parametrize("fmt", ["openai", "trl"])
def test_messages_jsonl(database_url: str, tmp_path: Path, fmt: str) -> None:
    record = reduce_as(database_url, tmp_path, fmt).record
    path = Path(record.path)
    assert path.parent == (tmp_path / "out").resolve() and path.suffix == ".jsonl"
    assert read_lines(path) == [{"messages": expected_messages(r)} for r in UNICODE_ROWS]
    raw = path.read_bytes()
    assert "🧪".encode() in raw and "ال".encode() in raw  # UTF-8, not \u escapes
    # ... except U+2028/U+2029, escaped so that no line reader cuts an example in two
    assert b"\\u2028" in raw and "\u2028".encode() not in raw and "\u2029".encode() not in raw
    assert len(raw.decode().splitlines()) == len(UNICODE_ROWS)
    assert record.sha256 == hashlib.sha256(raw).hexdigest()


def test_trl_prompt_completion(database_url: str, tmp_path: Path) -> None:
    record = reduce_as(database_url, tmp_path, "trl-prompt-completion").record
    expected = [
        {"prompt": expected_messages(r)[:2], "completion": expected_messages(r)[2:]}
        for r in UNICODE_ROWS
    ]
    assert read_lines(record.path) == expected


def test_parquet_read_by_hugging_face_datasets(database_url: str, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    result = reduce_as(database_url, tmp_path, "parquet", validation_fraction=0.4)
    record = result.record
    assert record.format == "parquet" and Path(record.path).suffix == ".parquet"
    files = {"train": record.path}
    if record.validation_path:
        files["validation"] = record.validation_path
    loaded = datasets.load_dataset(
        "parquet", data_files=files, cache_dir=str(tmp_path / "hf-cache")
    )
    rows = [*loaded["train"], *loaded.get("validation", [])]
    assert sorted(r["completion"] for r in rows) == sorted(r["response"] for r in UNICODE_ROWS)
    by_answer = {r["completion"]: r for r in rows}
    for source in UNICODE_ROWS:
        row = by_answer[source["response"]]
        assert row["messages"] == expected_messages(source)
        assert row["prompt"] == source["prompt"]
    assert record.sha256 == hashlib.sha256(Path(record.path).read_bytes()).hexdigest()


def test_the_dataset_card_says_where_it_came_from(database_url: str, tmp_path: Path) -> None:
    record = reduce_as(database_url, tmp_path, "openai", validation_fraction=0.4).record
    card = Path(record.card_path or "").read_text(encoding="utf-8")
    assert Path(record.card_path or "").parent == Path(record.path).parent
    assert "teacher tier `frontier`" in card
    assert record.sha256 in card
    assert f"| train | {Path(record.path).name} | {record.examples} |" in card
    if record.validation_examples:
        assert f"| {record.validation_examples} |" in card
    assert json.dumps(SYSTEM) in card  # the system prompt
    assert '"min_length": 20' in card  # the reducer's settings
    assert '"validation_fraction": 0.4' in card
