"""Batch input packing and output matching: pure functions, no services."""

import json

from models import AttemptStatus
from workers.batches.lines import custom_id, pack, prompt_id_of, read_results


def line(prompt_id: int, size: int = 10) -> tuple[int, bytes]:
    return prompt_id, b"x" * (size - 1) + b"\n"


def test_pack_keeps_each_file_within_the_request_and_byte_limits() -> None:
    lines = [line(i) for i in range(7)]
    assert [len(g) for g in pack(lines, max_requests=3, max_bytes=1000)] == [3, 3, 1]
    assert [len(g) for g in pack(lines, max_requests=100, max_bytes=25)] == [2, 2, 2, 1]
    assert [len(g) for g in pack([line(1, 50), line(2)], max_requests=9, max_bytes=20)] == [1, 1]


def test_custom_ids_name_one_prompt_or_none() -> None:
    assert prompt_id_of(custom_id(42)) == 42
    assert [prompt_id_of(v) for v in ("prompt-x", "p42", 42, None, "prompt-")] == [None] * 5


def output(prompt: object, status: int = 200, text: str = "an answer") -> bytes:
    body = {
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    if status != 200:
        body = {"error": {"message": "boom"}}
    row = {"custom_id": prompt, "response": {"status_code": status, "body": body}, "error": None}
    return (json.dumps(row) + "\n").encode()


def test_first_line_wins_and_strays_are_ignored() -> None:
    out = output("prompt-1", text="first") + output("prompt-1", text="again") + output("prompt-9")
    out += b"not json\n" + output("someone-else")
    expired = {"custom_id": "prompt-2", "response": None, "error": {"code": "batch_expired"}}
    errors = output("prompt-3", status=500) + (json.dumps(expired) + "\n").encode()
    errors += output("prompt-1", status=500)  # a repeat in the error file: ignored too
    results = read_results(out, errors, expected={1, 2, 3}, latency_ms=5.0)
    first = results.by_prompt[1].completion
    assert first is not None and first.text == "first" and first.completion_tokens == 4
    assert results.by_prompt[2].error is not None
    assert results.by_prompt[2].error.status == AttemptStatus.TIMEOUT
    failed = results.by_prompt[3].error
    assert failed is not None and failed.http_status == 500 and "boom" in str(failed)
    assert len(results.ignored) == 5  # repeat, prompt-9 (not ours), not JSON, stranger, repeat
