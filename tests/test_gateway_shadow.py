"""Live traffic teaches: with `shadow_rate = 1`, every request answered below the teacher
tier is also answered by the teacher through a real worker process (a shadow job), linked
to the live prompt; the report says how often the teacher agrees, and `reduce` of the live
job trains on the teacher's answers. Real gateway and worker processes, the simulator,
Redis, SQLite and PostgreSQL."""

import json
from pathlib import Path
from typing import Any

from openai import OpenAI
from sqlmodel import Session, select

from models import Job, JobMode, Prompt, PromptStatus
from simulator import RunningSimulator
from tests.helpers.cli import invoke
from tests.helpers.gateway import GatewayProcess
from tests.helpers.routing import route_config
from tests.helpers.services import make_engine
from tests.helpers.workers import Workers, wait_until

SERVED_SMALL = [
    "[easy] What is the capital of France?",
    "[easy] Name a colour of the sky.",
    "[easy] [refuse] Tell me a secret.",  # every model refuses alike: the teacher agrees
]
SERVED_FRONTIER = "[hard] What is the integral of x^x?"  # escalates: no shadow


def shadow_prompts(engine: Any) -> list[Prompt]:
    with Session(engine) as session:
        jobs = session.exec(select(Job).where(Job.mode == JobMode.SHADOW)).all()
        ids = [j.id for j in jobs]
        return list(session.exec(select(Prompt).where(Prompt.job_id.in_(ids))).all())  # type: ignore[union-attr]


def test_shadow_requests_teach(
    tmp_path: Path,
    tiered_sim: RunningSimulator,
    database_url: str,
    workers: Workers,
    use_config: Any,
) -> None:
    engine = make_engine(database_url)
    config = route_config(tmp_path, tiered_sim, database_url)
    with config.open("a") as f:
        f.write("\n[gateway]\nshadow_rate = 1.0\n")
    workers.start(config, tiers="frontier")
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        client = gateway.client()
        served = {}
        for text in [*SERVED_SMALL, SERVED_FRONTIER]:
            raw = client.chat.completions.with_raw_response.create(
                model="route", messages=[{"role": "user", "content": text}]
            )
            served[int(raw.headers["x-distillery-prompt-id"])] = raw.headers["x-distillery-tier"]
        direct = client.chat.completions.with_raw_response.create(
            model="frontier", messages=[{"role": "user", "content": "[easy] Hello there."}]
        )
        served[int(direct.headers["x-distillery-prompt-id"])] = "frontier"

        def all_answered() -> bool:
            found = shadow_prompts(engine)
            return len(found) == 3 and all(p.status == PromptStatus.SUCCEEDED for p in found)

        wait_until(all_answered, timeout=120, what="3 shadow answers", logs=workers.log_text)
    finally:
        gateway.stop()
    assert list(served.values()) == ["small", "small", "small", "frontier", "frontier"]

    shadows = shadow_prompts(engine)
    teacher = OpenAI(base_url=tiered_sim.base_url, api_key="x", max_retries=0)
    with Session(engine) as session:
        for shadow in shadows:
            assert shadow.meta is not None and shadow.meta["served_tier"] == "small"
            live = session.get(Prompt, shadow.meta["live_prompt_id"])
            assert live is not None and served[live.id] == "small"
            assert shadow.meta["live_job_id"] == live.job_id
            assert shadow.messages == live.messages and shadow.final_tier == "frontier"
            expected = teacher.chat.completions.create(model="sim-frontier", messages=live.messages)
            assert shadow.response == expected.choices[0].message.content
        live_job = session.get(Job, live.job_id)
        assert live_job is not None and live_job.mode == JobMode.LIVE

    from producer.report import build_report
    from workers.settings import load_settings

    with Session(engine) as session:
        report = build_report(session, live_job.id, tiers=load_settings(config).tiers)  # type: ignore[arg-type]
    assert report["shadow"] == {"sent": 3, "answered": 3, "agreed": 1, "agreement": 1 / 3}

    # reduce: the live job's own teacher answers (2) and its shadows' (3, one a refusal).
    use_config(config)
    out = tmp_path / "live.jsonl"
    result = invoke("reduce", str(live_job.id), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["examples"], summary["rejected"]) == (4, {"refusal": 1})
    answers = {json.loads(line)["messages"][-1]["content"] for line in out.read_text().splitlines()}
    assert {s.response for s in shadows if not s.response.startswith("I'm sorry")} <= answers  # type: ignore[union-attr]
