"""The simulator's Batch API, driven by the official `openai` SDK over real HTTP."""

import json
from typing import Any

import openai
import pytest

from simulator import RunningSimulator


def client_for(sim: RunningSimulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="not-needed", max_retries=0)


def input_lines(count: int, model: str = "sim-frontier") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"Explain {i}"}]},
        }
        for i in range(count)
    ]


def start(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def run_to_end(client: openai.OpenAI, batch_id: str) -> Any:
    for _ in range(10):
        batch = client.batches.retrieve(batch_id)
        if batch.status not in ("validating", "in_progress", "finalizing", "cancelling"):
            return batch
    raise AssertionError(f"batch {batch_id} never ended: {batch.status}")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_lifecycle_and_shuffled_output(batch_sim: RunningSimulator) -> None:
    client = client_for(batch_sim)
    created = start(client, input_lines(40))
    assert created.status == "validating" and created.completion_window == "24h"
    seen = [client.batches.retrieve(created.id).status for _ in range(3)]
    assert seen == ["in_progress", "finalizing", "completed"]
    batch = client.batches.retrieve(created.id)
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (40, 40)
    assert batch.error_file_id is None
    output = jsonl(client, batch.output_file_id)
    ids = [line["custom_id"] for line in output]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(40))
    assert ids != [f"req-{i}" for i in range(40)]  # match on custom_id, never on order
    body = output[0]["response"]["body"]
    assert output[0]["response"]["status_code"] == 200
    assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] > 0
    listed = client.batches.list(limit=5)
    assert [b.id for b in listed.data] == [created.id]


def test_same_text_as_the_chat_endpoint(batch_sim: RunningSimulator) -> None:
    client = client_for(batch_sim)
    line = input_lines(1)[0]
    batch = run_to_end(client, start(client, [line]).id)
    [output] = jsonl(client, batch.output_file_id)
    online = client.chat.completions.create(**line["body"])
    assert output["response"]["body"]["choices"][0]["message"]["content"] == (
        online.choices[0].message.content
    )


def test_invalid_input_fails_validation_with_errors(batch_sim: RunningSimulator) -> None:
    client = client_for(batch_sim)
    lines = input_lines(3) + input_lines(1, model="sim-small")
    lines[3]["custom_id"] = "req-3"  # the other model's line
    lines[1]["custom_id"] = "req-0"
    lines[2]["method"] = "GET"
    batch = run_to_end(client, start(client, lines).id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    found = {(e.code, e.line) for e in batch.errors.data}
    assert ("duplicate_custom_id", 2) in found and ("invalid_method", 3) in found
    assert any(e.code == "mismatched_model" for e in batch.errors.data)
    assert batch.output_file_id is None


def test_every_line_failing_gives_an_error_file_only(batch_sim: RunningSimulator) -> None:
    batch_sim.configure(error_rate=1.0)
    client = client_for(batch_sim)
    batch = run_to_end(client, start(client, input_lines(5)).id)
    assert batch.status == "completed" and batch.output_file_id is None
    errors = jsonl(client, batch.error_file_id)
    assert len(errors) == 5 and {e["response"]["status_code"] for e in errors} == {500}


def test_expiry_keeps_partial_output(batch_sim: RunningSimulator) -> None:
    batch_sim.configure_batches(expire_after_fraction=0.5)
    client = client_for(batch_sim)
    batch = run_to_end(client, start(client, input_lines(10)).id)
    assert batch.status == "expired"
    output, errors = jsonl(client, batch.output_file_id), jsonl(client, batch.error_file_id)
    assert len(output) == 5 and len(errors) == 5
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert {line["custom_id"] for line in output + errors} == {f"req-{i}" for i in range(10)}


def test_cancel(batch_sim: RunningSimulator) -> None:
    client = client_for(batch_sim)
    created = start(client, input_lines(3))
    assert client.batches.cancel(created.id).status == "cancelling"
    assert client.batches.retrieve(created.id).status == "cancelled"


def test_corrupt_output_and_outage(batch_sim: RunningSimulator) -> None:
    batch_sim.configure_batches(duplicate_lines=2, unknown_lines=1)
    client = client_for(batch_sim)
    batch = run_to_end(client, start(client, input_lines(4)).id)
    ids = [line["custom_id"] for line in jsonl(client, batch.output_file_id)]
    assert len(ids) == 7 and "nobody-sent-0" in ids
    batch_sim.configure_batches(unavailable_next=1)  # retrieves only
    with pytest.raises(openai.InternalServerError):
        client.batches.retrieve(batch.id)
    assert client.batches.retrieve(batch.id).status == "completed"


@pytest.mark.parametrize("change", [{"completion_window": "1h"}, {"input_file_id": "nope"}])
def test_bad_create_requests(batch_sim: RunningSimulator, change: dict[str, str]) -> None:
    client = client_for(batch_sim)
    uploaded = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    args = {
        "input_file_id": uploaded.id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **change,
    }
    with pytest.raises(openai.BadRequestError):
        client.batches.create(**args)
