"""`distillery eval agreement`: how often a tier answers a reference job's prompts as the
reference did — the student against its teacher, before and after training.

The reference is a job (its answered prompts, sent as that job sent them: its system prompt
first) or a chat JSONL file such as the reducer's validation split (each example's messages
up to its last assistant message, which is the reference answer). Prompts are sent greedily
(temperature 0) through the one call path (workers.caller: the tier's limits and retries).
Two answers agree when they are equal after normalisation: case, surrounding whitespace and
punctuation, and runs of whitespace are ignored, which is what a one-word-label task
(sentiment: "Positive." vs "positive") needs."""

import asyncio
import re
import string
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import PromptStatus
from models.training_data import answer_rows
from producer.status import get_job
from workers.caller import Caller, run_calls
from workers.chat import CallError, ChatRequest
from workers.errors import BadInput
from workers.job_settings import load_job_settings
from workers.settings import Settings
from workers.training.data import check_training_file, read_examples

PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u2026"  # curly quotes
SHOWN = 10


def normalise(text: str | None) -> str:
    return re.sub(r"\s+", " ", (text or "").strip().strip(PUNCTUATION + " \n\t").lower())


def reference_requests(
    engine: Engine, job_id: int, *, limit: int | None, max_tokens: int
) -> list[tuple[int, ChatRequest, str]]:
    """(idx, the request as the job sent it but greedy, the reference answer) per answered
    prompt, in input order."""
    with Session(engine) as session:
        job = get_job(session, job_id)
        settings = load_job_settings(job.mode, job.params)
        rows = [
            (row.idx, settings.request(row.messages), row.response or "")
            for row in answer_rows(session=session, job_id=job_id)
            if row.status == PromptStatus.SUCCEEDED
        ]
    if not rows:
        raise BadInput(f"job {job_id} has no answered prompts to compare with")
    picked = rows[:limit] if limit else rows
    return [(i, replace(r, temperature=0.0, max_tokens=max_tokens), a) for i, r, a in picked]


def file_requests(
    path: Path, *, limit: int | None, max_tokens: int
) -> list[tuple[int, ChatRequest, str]]:
    """(line number, the messages before the last assistant message, that message) per
    example of a chat fine-tuning file."""
    check_training_file(path, "reference file")
    work = []
    for line, messages in enumerate(read_examples(path), start=1):
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        request = ChatRequest(messages[:last], temperature=0.0, max_tokens=max_tokens)
        work.append((line, request, str(messages[last]["content"])))
    return work[:limit] if limit else work


def measure_agreement(
    settings: Settings,
    engine: Engine,
    *,
    tier_name: str,
    job_id: int | None = None,
    reference_file: Path | None = None,
    limit: int | None = None,
    max_tokens: int = 16,
) -> dict[str, Any]:
    tier = settings.require_tier(tier_name, "--tier")
    if reference_file is not None:
        work = file_requests(reference_file, limit=limit, max_tokens=max_tokens)
    elif job_id is not None:
        work = reference_requests(engine, job_id, limit=limit, max_tokens=max_tokens)
    else:
        raise BadInput("give a reference: --reference-job JOB or --reference FILE")

    async def ask_all(caller: Caller) -> list[str | None]:
        gate = asyncio.Semaphore(tier.calls_in_flight)

        async def ask(request: ChatRequest) -> str | None:
            async with gate:
                try:
                    return (await caller.call(tier, request)).text
                except CallError:
                    return None  # counted as a disagreement, and as failed

        return await asyncio.gather(*(ask(request) for _, request, _ in work))

    answers = run_calls(settings, ask_all)
    compared = [
        {"idx": idx, "reference": ref, "answer": answer,
         "agrees": answer is not None and normalise(answer) == normalise(ref)}
        for (idx, _, ref), answer in zip(work, answers, strict=True)
    ]  # fmt: skip
    agreed = sum(1 for item in compared if item["agrees"])
    return {
        "tier": tier_name,
        "model": tier.model,
        "reference_job": job_id,
        "reference_file": str(reference_file) if reference_file else None,
        "prompts": len(compared),
        "agreed": agreed,
        "agreement": agreed / len(compared),
        "failed_calls": sum(item["answer"] is None for item in compared),
        "disagreements": [item for item in compared if not item["agrees"]][:SHOWN],
        "answers": compared,
    }
