"""Judged quality: a judge tier scores each answer of a job 1-10 against a rubric, with a
one-line reason (`distillery judge JOB`).

The work is Celery's: a message carries a judge run's id and a batch of prompt ids to the
judge tier's queue, and the worker calls the tier through the one Caller (its limits and
retries); every call is an attempt row with purpose `judge` and its cost. A reply is read
by `parse_score`; one that cannot be read is asked once more (the reply shown back, the
format repeated), then recorded unscored with the reply as its error; a call that fails
after the tier's retries is recorded unscored with the failure. The rubric lives on the
`judge_runs` row, never in a message."""

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from models import AttemptPurpose, Prompt, PromptStatus, session_scope
from models.outcomes import Record
from models.quality import judged_prompt_ids, record_judgements
from models.tables import JudgeRun
from models.types import utcnow
from workers.attempts import attempt_from_completion, attempt_from_error
from workers.chat import CallError, ChatRequest, Completion
from workers.context import WorkerContext
from workers.settings import TierConfig

# The simulator's judge stand-in answers when a message contains this phrase (any case).
SCORE_PHRASE = "score the answer from 1 to 10"
JUDGE_MAX_TOKENS = 80
REASON_MAX = 300

DEFAULT_RUBRIC = """You judge answers that will be used to train a smaller model.
A good answer is correct, answers what was asked, is complete without padding, and is
clearly written. Score 1 for a refusal, nonsense or an answer to another question; 5 for a
partly right or partly relevant answer; 10 for an answer you would want a student to learn
from word for word."""

JUDGE_INSTRUCTION = (
    "Score the answer from 1 to 10 against the rubric. Reply with exactly one line: "
    "SCORE: <1-10> - <one-line reason>"
)
RETRY_INSTRUCTION = "That reply could not be read. " + JUDGE_INSTRUCTION

# "SCORE: 7 - reason", "Score = 7/10: reason", "7 — reason", "**Score:** 8. reason"
_SCORE = re.compile(
    r"^\W*(?:score\W*)?(?P<n>\d{1,2})(?:\s*/\s*10)?(?!\d)\W*(?P<reason>.*)$", re.IGNORECASE
)


def parse_score(text: str | None) -> tuple[int, str] | None:
    """(score 1-10, reason) from the reply's first non-empty line, or None."""
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    found = _SCORE.match(line)
    if found is None:
        return None
    score = int(found["n"])
    if not 1 <= score <= 10:
        return None
    return score, found["reason"].strip()[:REASON_MAX]


def judge_request(rubric: str, messages: list[dict[str, Any]], answer: str) -> ChatRequest:
    """The rubric as the system message; the question (the prompt's last user message) and
    the answer as JSON strings, one line each, whatever they hold."""
    question = next(
        (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    content = (
        f"{JUDGE_INSTRUCTION}\n\n"
        f"Question: {json.dumps(question, ensure_ascii=False)}\n"
        f"Answer: {json.dumps(answer, ensure_ascii=False)}"
    )
    return ChatRequest(
        [{"role": "system", "content": rubric}, {"role": "user", "content": content}],
        temperature=0.0,
        max_tokens=JUDGE_MAX_TOKENS,
    )


def retry_request(first: ChatRequest, reply: str) -> ChatRequest:
    messages = [
        *first.messages,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": RETRY_INSTRUCTION},
    ]
    return ChatRequest(messages, temperature=0.0, max_tokens=JUDGE_MAX_TOKENS)


@dataclass(frozen=True, slots=True)
class JudgeItem:
    prompt_id: int
    job_id: int
    request: ChatRequest


def load_judge_work(engine: Engine, run_id: int, prompt_ids: list[int]) -> list[JudgeItem]:
    """The batch's answered prompts that this run has not judged yet (a redelivered
    message skips what is done)."""
    with Session(engine) as session:
        run = session.get(JudgeRun, run_id)
        if run is None:
            return []
        done = judged_prompt_ids(session=session, judge_run_id=run_id, prompt_ids=prompt_ids)
        query = select(Prompt).where(
            col(Prompt.id).in_(prompt_ids), col(Prompt.status) == PromptStatus.SUCCEEDED
        )
        prompts = [p for p in session.execute(query).scalars() if p.id not in done]
        return [
            JudgeItem(p.id, p.job_id, judge_request(run.rubric, p.messages, p.response or ""))
            for p in prompts
            if p.id is not None
        ]


async def judge_message(
    run_id: int, work: Sequence[JudgeItem], tier: TierConfig, ctx: WorkerContext
) -> None:
    """Judge a message's answers, at most the tier's calls in flight, then record the
    verdicts (their attempts are committed by the ledger writer as they happen)."""
    in_flight = ctx.loop.in_flight(tier.name, tier.calls_in_flight)

    async def one(item: JudgeItem) -> dict[str, Any]:
        async with in_flight:
            return await judge_one(run_id, item, tier, ctx)

    verdicts = await asyncio.gather(*(one(item) for item in work))
    await asyncio.to_thread(save_verdicts, ctx.engine, run_id, verdicts)


async def judge_one(
    run_id: int, item: JudgeItem, tier: TierConfig, ctx: WorkerContext
) -> dict[str, Any]:
    pending: list[asyncio.Future[Record]] = []

    def record(attempt: dict[str, Any]) -> None:
        pending.append(ctx.ledger.record(Record(item.job_id, item.prompt_id, [attempt])))

    def record_failure(error: CallError) -> None:
        record(attempt_from_error(item.prompt_id, tier, error, purpose=AttemptPurpose.JUDGE))

    verdict: dict[str, Any] = {"judge_run_id": run_id, "prompt_id": item.prompt_id}
    request = item.request
    try:
        for turn in range(2):  # the reply, and one retry of an unreadable one
            completion: Completion = await ctx.caller.call(tier, request, on_failure=record_failure)
            record(
                attempt_from_completion(
                    item.prompt_id, tier, completion, purpose=AttemptPurpose.JUDGE
                )
            )
            parsed = parse_score(completion.text)
            if parsed is not None:
                verdict.update(score=parsed[0], reason=parsed[1], error=None)
                break
            verdict.update(score=None, reason=None,
                           error=f"unreadable judge reply ({turn + 1} of 2): "
                           f"{completion.text[:200]!r}")  # fmt: skip
            request = retry_request(item.request, completion.text)
    except CallError as error:  # its attempts are recorded by record_failure
        verdict.update(score=None, reason=None, error=f"judge call failed: {error}")
    await asyncio.gather(*pending)
    return {**verdict, "created_at": utcnow()}


def save_verdicts(engine: Engine, run_id: int, verdicts: Sequence[dict[str, Any]]) -> None:
    """Insert the verdicts not yet on record (two copies of a message may both get here)."""
    if not verdicts:
        return
    try:
        with session_scope(engine) as session:
            record_judgements(session=session, rows=verdicts)
    except IntegrityError:
        with session_scope(engine) as session:
            ids = [v["prompt_id"] for v in verdicts]
            done = judged_prompt_ids(session=session, judge_run_id=run_id, prompt_ids=ids)
            record_judgements(
                session=session, rows=[v for v in verdicts if v["prompt_id"] not in done]
            )
