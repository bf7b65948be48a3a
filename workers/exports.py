"""The reducer's output formats, each a writer that takes one example at a time and is
renamed into place only when complete (a crash never leaves half a file under the final
name):

* openai — OpenAI chat fine-tuning JSONL, `{"messages": [...]}`, format-checked as written;
* trl — the same `messages` lines, for TRL's SFTTrainer (conversational format);
* trl-prompt-completion — `{"prompt": [...], "completion": [{"role": "assistant", ...}]}`,
  TRL's conversational prompt-completion format (completion-only loss without a chat
  template's generation markers);
* parquet — one row per example: `messages` (a list of {role, content}), `prompt` and
  `completion` (strings), readable by Hugging Face `datasets` and pandas.
"""

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Any

from workers.finetune_format import FormatCheck, check_example

SUFFIXES = {"openai": ".jsonl", "trl": ".jsonl", "trl-prompt-completion": ".jsonl",
            "parquet": ".parquet"}  # fmt: skip
PARQUET_ROWS_PER_GROUP = 5000

# What json.dumps(example, ensure_ascii=False) builds on every call, built once.
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def jsonl_line(example: dict[str, Any]) -> bytes:
    """One UTF-8 line. U+2028 and U+2029 are valid raw inside JSON strings, but Python's
    str.splitlines() and JavaScript readers take them for line ends and cut the example in
    two: escaped, they decode to the same text."""
    text = _ENCODER.encode(example)
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return (text + "\n").encode()


def prompt_completion(example: dict[str, Any]) -> dict[str, Any]:
    messages = example["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def _temporary(path: Path) -> Path:
    # Its own name: two reducers of one job (a re-sent reduce message) never share it.
    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


class ExampleWriter:
    """Writes JSONL lines to a temporary file, hashing as it goes."""

    def __init__(self, path: Path, check: FormatCheck | None = None, fmt: str = "openai") -> None:
        self.path = path
        self.tmp = _temporary(path)
        self.file: IO[bytes] = self.tmp.open("wb")
        self.sha = hashlib.sha256()
        self.lines = 0
        # Checked as the lines are written, so the file is never read back to check it.
        self.check = check
        self.prompt_completion = fmt == "trl-prompt-completion"

    def write(self, line: bytes, example: dict[str, Any]) -> None:
        """`line` is `jsonl_line(example)` (the messages form)."""
        if self.prompt_completion:
            line = jsonl_line(prompt_completion(example))
        self.file.write(line)
        self.sha.update(line)
        self.lines += 1
        if self.check is not None:
            self.check.add(check_example(example))

    def close(self, *, keep_empty: bool = True) -> None:
        self.file.close()
        if self.lines or keep_empty:
            os.replace(self.tmp, self.path)
        else:  # nothing to keep: nor an earlier run's file under that name
            self.tmp.unlink()
            self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class ParquetWriter(ExampleWriter):
    """Examples buffered into row groups of PARQUET_ROWS_PER_GROUP; the sha256 is the
    finished file's (hashed once it is closed)."""

    def __init__(self, path: Path, check: FormatCheck | None = None, fmt: str = "parquet") -> None:
        import pyarrow as pa

        super().__init__(path, check, fmt)
        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        self.schema = pa.schema(
            [("messages", pa.list_(message)), ("prompt", pa.string()), ("completion", pa.string())]
        )
        self.rows: list[dict[str, Any]] = []
        self.parquet: Any = None

    def write(self, line: bytes, example: dict[str, Any]) -> None:
        messages = [{"role": m["role"], "content": m["content"]} for m in example["messages"]]
        prompt = next((m["content"] for m in reversed(messages[:-1]) if m["role"] == "user"), "")
        self.rows.append(
            {"messages": messages, "prompt": prompt, "completion": messages[-1]["content"]}
        )
        self.lines += 1
        if self.check is not None:
            self.check.add(check_example(example))
        if len(self.rows) >= PARQUET_ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.parquet is None:
            self.parquet = pq.ParquetWriter(self.file, self.schema)
        self.parquet.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
        self.rows = []

    def close(self, *, keep_empty: bool = True) -> None:
        if self.rows or self.parquet is None:
            self._flush()  # an empty file still gets its schema
        self.parquet.close()
        self.file.flush()
        super().close(keep_empty=keep_empty)
        if self.path.exists():
            self.sha = sha256_of(self.path)

    def discard(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        super().discard()


def sha256_of(path: Path) -> Any:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha


def writer_for(fmt: str, path: Path, check: FormatCheck | None = None) -> ExampleWriter:
    if fmt == "parquet":
        return ParquetWriter(path, check)
    return ExampleWriter(path, check, fmt)
