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
    if set(example) != {"messages"}:
        return f"unexpected keys {sorted(set(example) - {'messages'})}"
    messages = example["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"invalid message {str(message)[:80]}"
        if not isinstance(message.get("content"), str):
            return "message content must be a string"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message"
    return None


def check_file(path: Path) -> FormatReport:
    report = FormatReport()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                problem = check_example(json.loads(line))
            except json.JSONDecodeError as exc:
                problem = f"invalid JSON ({exc.msg})"
            if problem:
                report.errors.append(f"{path}:{number}: {problem}")
            report.examples += 1
    if report.examples < MIN_EXAMPLES:
        report.warnings.append(
            f"{path}: {report.examples} examples; OpenAI fine-tuning needs at least {MIN_EXAMPLES}"
        )
    return report
