"""Teacher generation for one prompt: call the teacher tier, record every attempt, store
the answer. Plain functions; `workers.tasks` wraps them for Celery."""

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import TERMINAL_PROMPT_STATUSES, Job, JobStatus, Prompt, PromptStatus
from workers.client import CallError, call_tier
from workers.jobs import PromptTotals, complete_prompt, failed_attempt, save_attempt, success_attempt
from workers.retry import RetryPolicy, call_with_retries
from workers.settings import Settings, TeacherConfig


@dataclass(frozen=True, slots=True)
class WorkItem:
    prompt_id: int
    job_id: int
    messages: list[dict[str, Any]]
    params: dict[str, Any]


def teacher_params(config: TeacherConfig, **overrides: Any) -> dict[str, Any]:
    """The job's frozen teacher settings: config values unless the submit overrode them."""
    params = {
        "tier": config.tier,
        "system_prompt": config.system_prompt,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
    }
    params.update({key: value for key, value in overrides.items() if value is not None})
    return params


def build_request(params: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    system = params.get("system_prompt")
    if system and not any(m.get("role") in ("system", "developer") for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    request: dict[str, Any] = {"messages": messages, "temperature": params.get("temperature", 0.7)}
    if params.get("max_tokens"):
        request["max_tokens"] = params["max_tokens"]
    return request


def load_work(engine: Engine, prompt_id: int) -> WorkItem | None:
    """The prompt to answer, or None when there is nothing left to do for it (already
    answered, cancelled, or gone) — the check that makes redelivered messages harmless."""
    with Session(engine) as session:
        prompt = session.get(Prompt, prompt_id)
        if prompt is None or prompt.status in TERMINAL_PROMPT_STATUSES:
            return None
        job = session.get(Job, prompt.job_id)
        if job is None or job.status != JobStatus.RUNNING:
            return None
        return WorkItem(prompt_id, prompt.job_id, list(prompt.messages), dict(job.params))


def answer_prompt(prompt_id: int, *, settings: Settings, engine: Engine) -> int | None:
    """Answer one prompt with the teacher tier. Returns the job id when this prompt was the
    job's last, so the caller can start the reducer."""
    work = load_work(engine, prompt_id)
    if work is None:
        return None
    tier_name = work.params["tier"]
    tier = settings.require_tier(tier_name, f"job {work.job_id}")
    request = build_request(work.params, work.messages)
    totals = PromptTotals()

    def record_failure(error: CallError) -> None:
        attempt = failed_attempt(prompt_id=prompt_id, tier_name=tier_name, tier=tier, error=error)
        totals.add(attempt)
        save_attempt(engine, attempt)

    policy = RetryPolicy(tier.max_retries, tier.backoff_base_s, tier.backoff_max_s)
    try:
        completion = call_with_retries(
            lambda: call_tier(tier, tier_name, request), policy, on_failure=record_failure
        )
    except CallError as error:
        finished = complete_prompt(
            engine, prompt_id=prompt_id, job_id=work.job_id, status=PromptStatus.FAILED,
            final_tier=tier_name, error=str(error), **totals.as_fields(),
        )
        return work.job_id if finished else None
    attempt = success_attempt(prompt_id=prompt_id, tier_name=tier_name, tier=tier, completion=completion)
    totals.add(attempt)
    finished = complete_prompt(
        engine, prompt_id=prompt_id, job_id=work.job_id, status=PromptStatus.SUCCEEDED,
        attempt=attempt, final_tier=tier_name, response=completion.text, **totals.as_fields(),
    )
    return work.job_id if finished else None
