"""`distillery eval agreement`: how often a tier answers a reference job's prompts as the
reference did — the student against its teacher, before and after training.

The reference is a job (its answered prompts, sent as that job sent them: its system prompt
first) or a chat JSONL file such as the reducer's validation split (each example's messages
up to its last assistant message, which is the reference answer). Prompts are sent greedily
(temperature 0) through the one call path (workers.caller: the tier's limits and retries).
Two answers agree when they are equal after normalisation: case, surrounding whitespace and
punctuation, and runs of whitespace are ignored, which is what a one-word-label task
(sentiment: "Positive." vs "positive") needs.

With a judge tier (`--judge TIER` or `[eval] judge_tier`), every answered pair that is not an
exact match goes to that tier, through the same Caller, with JUDGE_PROMPT; its verdict is
the first word of its reply, YES or NO (any case, surrounding punctuation ignored). Anything
else is counted as unparseable and a failed judge call as failed; neither counts as
agreement. The combined agreement is exact matches plus the judge's YESes."""

import asyncio
import json
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
from workers.settings import Settings, TierConfig
from workers.training.data import check_training_file, read_examples

PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u2026"  # curly quotes
SHOWN = 10
JUDGE_MAX_TOKENS = 4
# "agree in meaning" is also the phrase the simulator's judge stand-in looks for
JUDGE_PROMPT = (
    "Does the candidate answer agree in meaning with the reference answer? "
    "Reply with exactly one word: YES or NO.\n\n"
    "Reference answer: {reference}\nCandidate answer: {candidate}"
)


def normalise(text: str | None) -> str:
    return re.sub(r"\s+", " ", (text or "").strip().strip(PUNCTUATION + " \n\t").lower())


def judge_request(reference: str, candidate: str) -> ChatRequest:
    # JSON strings: quoted, one line each, whatever the answers hold
    content = JUDGE_PROMPT.format(
        reference=json.dumps(reference, ensure_ascii=False),
        candidate=json.dumps(candidate, ensure_ascii=False),
    )
    return ChatRequest([{"role": "user", "content": content}], temperature=0.0,
                       max_tokens=JUDGE_MAX_TOKENS)  # fmt: skip


def parse_verdict(text: str | None) -> bool | None:
    """True for YES, False for NO (the reply's first word), None for anything else."""
    words = (text or "").split()
    first = words[0].strip(PUNCTUATION).upper() if words else ""
    return {"YES": True, "NO": False}.get(first)


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
    judge_name: str | None = None,
) -> dict[str, Any]:
    tier = settings.require_tier(tier_name, "--tier")
    judge_name = judge_name or settings.eval.judge_tier
    judge = settings.require_tier(judge_name, "--judge") if judge_name else None
    if reference_file is not None:
        work = file_requests(reference_file, limit=limit, max_tokens=max_tokens)
    elif job_id is not None:
        work = reference_requests(engine, job_id, limit=limit, max_tokens=max_tokens)
    else:
        raise BadInput("give a reference: --reference-job JOB or --reference FILE")
    refs = [ref for _, _, ref in work]

    async def ask_and_judge(caller: Caller) -> tuple[list[str | None], dict[int, str | None]]:
        answers = await ask_all(caller, tier, [request for _, request, _ in work])
        unmatched = [n for n, answer in enumerate(answers)
                     if answer is not None and normalise(answer) != normalise(refs[n])]  # fmt: skip
        if judge is None or not unmatched:
            return answers, {}
        replies = await ask_all(
            caller, judge, [judge_request(refs[n], answers[n] or "") for n in unmatched]
        )
        return answers, dict(zip(unmatched, replies, strict=True))

    answers, replies = run_calls(settings, ask_and_judge)
    compared = []
    for n, ((idx, _, ref), answer) in enumerate(zip(work, answers, strict=True)):
        exact = answer is not None and normalise(answer) == normalise(ref)
        item: dict[str, Any] = {"idx": idx, "reference": ref, "answer": answer, "exact": exact}
        if n in replies:
            item["judge_reply"] = replies[n]
            item["verdict"] = _verdict(replies[n])
        item["agrees"] = exact or item.get("verdict") == "yes"
        compared.append(item)
    verdicts = [item.get("verdict") for item in compared]
    agreed = sum(1 for item in compared if item["agrees"])
    return {
        "tier": tier_name,
        "model": tier.model,
        "judge": judge_name if judge else None,
        "reference_job": job_id,
        "reference_file": str(reference_file) if reference_file else None,
        "prompts": len(compared),
        "exact": sum(1 for item in compared if item["exact"]),
        "judged_agree": verdicts.count("yes"),
        "judged_disagree": verdicts.count("no"),
        "judge_unparseable": verdicts.count("unparseable"),
        "judge_failed": verdicts.count("failed"),
        "agreed": agreed,
        "agreement": agreed / len(compared),
        "failed_calls": sum(item["answer"] is None for item in compared),
        "disagreements": [item for item in compared if not item["agrees"]][:SHOWN],
        "answers": compared,
    }


def _verdict(reply: str | None) -> str:
    if reply is None:
        return "failed"
    return {True: "yes", False: "no", None: "unparseable"}[parse_verdict(reply)]


async def ask_all(
    caller: Caller, tier: TierConfig, requests: list[ChatRequest]
) -> list[str | None]:
    """Each request's answer, None when its call failed; the tier's calls in flight at once."""
    gate = asyncio.Semaphore(tier.calls_in_flight)

    async def ask(request: ChatRequest) -> str | None:
        async with gate:
            try:
                return (await caller.call(tier, request)).text
            except CallError:
                return None  # the caller counts it as failed

    return await asyncio.gather(*(ask(request) for request in requests))
