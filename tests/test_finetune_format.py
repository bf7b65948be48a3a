"""workers.finetune_format: the chat fine-tuning format's rules for one example and a file."""

import json
from pathlib import Path

from workers.finetune_format import check_example, check_file


def test_finetune_format_rules(tmp_path: Path) -> None:
    assert check_example({"messages": [{"role": "user", "content": "q"}]}) == "no assistant message"
    assert "unexpected keys" in str(check_example({"messages": [], "extra": 1}))
    assert "invalid message" in str(check_example({"messages": [{"role": "tool", "content": "x"}]}))
    path = tmp_path / "t.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path.write_text(json.dumps(good) + "\n")
    report = check_file(path)
    assert report.errors == [] and report.examples == 1 and "at least 10" in report.warnings[0]
