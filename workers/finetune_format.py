"""Checks a chat fine-tuning JSONL file against OpenAI's format rules (the cookbook's
checks): one object per line with only a `messages` list, known roles, string contents,
at least one assistant message per example. Fewer than 10 examples is a warning."""

import json
from dataclasses import dataclass, field
from pathlib import Path

ROLES = frozenset({"system", "user", "assistant"})
MIN_EXAMPLES = 10


@dataclass
class FormatReport:
    examples: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_example(example: object) -> str | None:
    """The first rule the example breaks, or None."""
    if not isinstance(example, dict):
        return "not a JSON object"
    # Run on every example the reducer writes, so written for speed: no set built per example,
    # and the assistant message looked for in the one pass over the messages.
    if len(example) != 1 or "messages" not in example:
        return f"unexpected keys {sorted(set(example) - {'messages'})}"
    messages = example["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    assistant = False
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"invalid message {str(message)[:80]}"
        if not isinstance(message.get("content"), str):
            return "message content must be a string"
        assistant = assistant or message["role"] == "assistant"
    return None if assistant else "no assistant message"


class FormatCheck:
    """The report of a file built one line at a time: `check_file` feeds it the lines it
    reads back, the reducer the examples it writes (so it never re-reads its own output)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.report = FormatReport()

    def add(self, problem: str | None) -> None:
        """Count the next line, with the rule it breaks (None when it breaks none)."""
        self.report.examples += 1
        if problem:
            self.report.errors.append(f"{self.path}:{self.report.examples}: {problem}")

    def finish(self) -> FormatReport:
        if self.report.examples < MIN_EXAMPLES:
            self.report.warnings.append(
                f"{self.path}: {self.report.examples} examples; "
                f"OpenAI fine-tuning needs at least {MIN_EXAMPLES}"
            )
        return self.report


def check_file(path: Path) -> FormatReport:
    check = FormatCheck(path)
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                problem = check_example(json.loads(line))
            except json.JSONDecodeError as exc:
                problem = f"invalid JSON ({exc.msg})"
            check.add(problem)
    return check.finish()
