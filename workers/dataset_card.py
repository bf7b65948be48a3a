"""The dataset card written beside each reducer output: where the data came from (teacher
tier and model, system prompt, the job's settings), how it was filtered (the reducer's
settings and the count per reason), the split, and the files' sha256 — a Hugging Face
style README.md with a YAML header, readable without the database."""

import json
from pathlib import Path
from typing import Any

LOADERS = {
    "parquet": 'load_dataset("parquet", data_files={data_files})',
    "openai": 'load_dataset("json", data_files={data_files})',
    "trl": 'load_dataset("json", data_files={data_files})',
    "trl-prompt-completion": 'load_dataset("json", data_files={data_files})',
}


def card_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".card.md")


def write_card(path: Path, facts: dict[str, Any]) -> None:
    path.write_text(render_card(facts), encoding="utf-8")


def render_card(facts: dict[str, Any]) -> str:
    files = {"train": Path(facts["path"]).name}
    if facts.get("validation_path"):
        files["validation"] = Path(facts["validation_path"]).name
    loader = LOADERS[facts["format"]].format(data_files=json.dumps(files))
    rejected = facts["rejected"] or {}
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        *(f"  - split: {split}\n    path: {name}" for split, name in files.items()),
        "tags: [distillation, distillery]",
        "---",
        f"# Distillery job {facts['job_id']}: {facts['examples']} training examples",
        "",
        f"Answers of the teacher tier `{facts['tier']}` (model `{facts['model']}`), "
        f"filtered by `distillery reduce`; format `{facts['format']}`.",
        "",
        "```python",
        "from datasets import load_dataset",
        f"data = {loader}",
        "```",
        "",
        "## Files",
        "",
        "| split | file | examples | sha256 |",
        "|---|---|---|---|",
        f"| train | {files['train']} | {facts['examples']} | {facts['sha256']} |",
    ]
    if "validation" in files:
        lines.append(
            f"| validation | {files['validation']} | {facts['validation_examples']} "
            f"| {facts['validation_sha256']} |"
        )
    lines += ["", "## Rows left out, by reason", "", "| reason | rows |", "|---|---|"]
    lines += [f"| {reason} | {count} |" for reason, count in sorted(rejected.items())]
    if not rejected:
        lines.append("| (none) | 0 |")
    lines += [
        "",
        "Each one, with the row it duplicates: "
        f"`distillery results {facts['job_id']} --rejected [--reason R]`.",
        "",
        "## Split",
        "",
        json_block(facts["split"]),
        "## System prompt",
        "",
        json_block(facts.get("system_prompt")),
        "## Job settings",
        "",
        json_block(facts["job_settings"]),
        "## Reducer settings",
        "",
        json_block(facts["reducer_settings"]),
    ]
    if facts.get("scores"):
        lines += ["## Judge scores (all answers judged)", "", json_block(facts["scores"])]
    return "\n".join(lines) + "\n"


def json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n```\n"
