"""A chat fine-tuning file as training rows: each example formatted with the base model's own
chat template, tokenised once, and labelled so the loss counts only the assistant's tokens
(the labels of every other token are -100, which the model's loss ignores).

TRL's `assistant_only_loss` needs `{% generation %}` markers that SmolLM2's template lacks
(trl #5471); instead each assistant turn's span is found from the template itself: the text
of the turns before it with the generation prompt, and the text up to its end, must both be
prefixes of the whole conversation's text (true of ChatML and of most templates)."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.errors import BadInput
from workers.finetune_format import MIN_EXAMPLES, check_file

IGNORE = -100
MAX_REPORTED_ERRORS = 10


@dataclass(frozen=True)
class Row:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class Dataset:
    rows: list[Row] = field(default_factory=list)
    # Examples left out, by reason: "over_context" (longer than max_length tokens).
    dropped: dict[str, int] = field(default_factory=dict)


def check_training_file(path: Path, what: str = "training file", *, minimum: int = 1) -> int:
    """The number of examples; BadInput (with line numbers) when the file breaks the chat
    fine-tuning format or has fewer than MINIMUM examples. Needs no train extra."""
    if not path.is_file():
        raise BadInput(f"{what} {path} not found; nothing was started")
    try:
        report = check_file(path)
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text ({exc.reason}); nothing was started") from None
    if report.errors:
        shown = report.errors[:MAX_REPORTED_ERRORS]
        more = len(report.errors) - len(shown)
        lines = [f"{what} {path} is not valid chat fine-tuning JSONL:", *shown]
        lines += [f"... and {more} more"] if more else []
        raise BadInput("\n".join([*lines, "nothing was started"]))
    if report.examples < minimum:
        raise BadInput(
            f"{what} {path} has {report.examples} examples; training needs at least "
            f"{minimum}; nothing was started"
        )
    return report.examples


def read_examples(path: Path) -> list[list[dict[str, Any]]]:
    """The messages of each example (the file was checked by check_training_file)."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line)["messages"] for line in lines if line.strip()]


def encode(messages: list[dict[str, Any]], tokenizer: Any) -> Row:
    text = _template(tokenizer, messages, generation_prompt=False)
    spans = list(_assistant_spans(messages, tokenizer, text))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE
        for token, (begin, _) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ]
    return Row(list(encoded["input_ids"]), labels)


def _assistant_spans(messages: list[dict[str, Any]], tokenizer: Any, text: str) -> Any:
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_prefix(tokenizer, messages[:index], text, generation_prompt=True))
        end = len(_prefix(tokenizer, messages[: index + 1], text, generation_prompt=False))
        yield start, end


def _prefix(tokenizer: Any, messages: list[dict[str, Any]], text: str, **kw: bool) -> str:
    prefix = _template(tokenizer, messages, **kw) if messages else ""
    if not text.startswith(prefix):
        raise BadInput(
            "the base model's chat template does not render a conversation's turns as "
            "prefixes of the whole, so the assistant's tokens cannot be found"
        )
    return prefix


def _template(tokenizer: Any, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
    return str(
        tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    )


def build_dataset(
    path: Path, tokenizer: Any, *, max_length: int, minimum: int = MIN_EXAMPLES
) -> Dataset:
    """Every example of PATH encoded; those over MAX_LENGTH tokens are dropped and counted
    (cutting them would train on answers without their ends), and if fewer than MINIMUM
    remain the run is refused."""
    dataset = Dataset()
    for messages in read_examples(path):
        row = encode(messages, tokenizer)
        if len(row.input_ids) > max_length:
            dataset.dropped["over_context"] = dataset.dropped.get("over_context", 0) + 1
        elif row.trained_tokens:
            dataset.rows.append(row)
    if len(dataset.rows) < minimum:
        over = dataset.dropped.get("over_context", 0)
        raise BadInput(
            f"{path}: {len(dataset.rows)} examples fit in {max_length} tokens "
            f"({over} longer were dropped); training needs at least {minimum}"
        )
    return dataset
