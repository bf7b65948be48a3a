"""A scripted model's answer key: the answers a simulated model gives to prompts it knows.

A model whose behaviour sets `answers` (a JSONL file) answers any request whose last user
message is a prompt in that file with the file's answer, and every other request as usual.
It lets the simulator play a teacher for a narrow task: the sentiment example's teacher
answers as the people who labelled the sentences did. Each line is either

    {"prompt": "...", "answer": "..."}
    {"messages": [..., {"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

(the second is a chat fine-tuning example: the last user message and the assistant's answer
after it). A file that is missing, not JSON, or has a line of neither shape is an error when
the config is loaded, with the line's number, not a wrong answer later.
"""

import json
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any


@lru_cache(maxsize=8)
def load_answer_key(path: str) -> MappingProxyType[str, str]:
    """Read once per file: each request looks its prompt up in memory."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"answers file {path}: {exc}") from exc
    key: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            prompt, answer = _pair(json.loads(line))
        except (json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"answers file {path}, line {number}: {exc}") from exc
        key[prompt.strip()] = answer
    if not key:
        raise ValueError(f"answers file {path} has no answers")
    return MappingProxyType(key)


def _pair(record: Any) -> tuple[str, str]:
    if isinstance(record, dict) and isinstance(record.get("messages"), list):
        return _chat_pair(record["messages"])
    if isinstance(record, dict):
        prompt, answer = record.get("prompt"), record.get("answer")
        if isinstance(prompt, str) and isinstance(answer, str):
            return prompt, answer
    raise ValueError('expected {"prompt": "...", "answer": "..."} or {"messages": [...]}')


def _chat_pair(messages: list[Any]) -> tuple[str, str]:
    turns = [m for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)]
    if len(turns) < 2 or turns[-1].get("role") != "assistant" or turns[-2].get("role") != "user":
        raise ValueError("a chat example must end with a user message and the assistant's answer")
    return turns[-2]["content"], turns[-1]["content"]
