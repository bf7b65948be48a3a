"""Live traffic teaches (`[gateway] shadow_rate`): a sample of the live requests answered
below the teacher tier is sent, after its answer was returned, to the teacher tier through
the workers' queue, as a prompt of a shadow job (`jobs.mode = 'shadow'`, one per UTC day).

The shadow prompt is an ordinary prompt of a teacher-like job: a worker of the teacher tier
answers it like any teacher job's prompt, the sweeper re-sends it if its message is lost,
and its metadata links it to the live prompt it shadows (`live_prompt_id`, `live_job_id`,
`served_tier`). Whether the teacher agrees with the served answer is read from the two
rows (`models.live.shadow_agreement`); `distillery reduce LIVE_JOB` trains on the teacher's
answers (`models.training_data.shadow_answer_rows`)."""

import asyncio
import random

from models import JobMode
from models.live import AdmitRow, live_job_id
from models.types import utcnow
from workers.app import ANSWER_TASK, app
from workers.context import WorkerContext
from workers.job_settings import TeacherSettings
from workers.live import LiveOutcome, LiveRequest


def wanted(outcome: LiveOutcome, rate: float, teacher: str) -> bool:
    """Whether this answered request gets a shadow (one below the teacher tier, sampled)."""
    return (
        rate > 0
        and outcome.completion is not None
        and outcome.final_tier != teacher
        and random.random() < rate
    )


def shadow_settings(ctx: WorkerContext) -> TeacherSettings:
    """The teacher tier, answering the messages as they were served (no system prompt)."""
    teacher = ctx.settings.teacher
    return TeacherSettings(tier=teacher.tier, system_prompt=None, temperature=teacher.temperature)


async def send_shadow(ctx: WorkerContext, live: LiveRequest, outcome: LiveOutcome) -> int:
    """Record the shadow prompt (group commit) and send it to the teacher tier's queue;
    its id."""
    job = shadow_settings(ctx)
    name = f"shadow-{utcnow():%Y-%m-%d}"
    job_id = await asyncio.to_thread(_shadow_job, ctx, name, job)
    meta = {
        "live_prompt_id": outcome.prompt_id,
        "live_job_id": outcome.job_id,
        "served_tier": outcome.final_tier,
    }
    row = AdmitRow(job_id, live.messages, job.tier, None, None, meta)
    admitted = await asyncio.wrap_future(ctx.ledger.admit(row))
    await asyncio.to_thread(
        app.send_task, ANSWER_TASK, ([admitted.prompt_id], job.tier), queue=job.tier
    )
    return admitted.prompt_id


def _shadow_job(ctx: WorkerContext, name: str, job: TeacherSettings) -> int:
    with ctx.ledger.engine.begin() as conn:
        return live_job_id(
            conn=conn, name=name, params=job.to_params(), router=None, mode=JobMode.SHADOW
        )
