"""The live gateway (`distillery serve`) as a client sees it: a real gateway process, the
simulator over HTTP, real Redis, SQLite and PostgreSQL, and the real `openai` SDK (sync and
async, `with_raw_response`) as the client. The ledger is read back from the database."""

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from sqlmodel import Session, select

from models import Attempt, Fallback, Job, JobMode, JobStatus, Prompt, PromptStatus
from simulator import RunningSimulator
from tests.helpers.config import TIERS
from tests.helpers.gateway import GatewayProcess
from tests.helpers.routing import CASES, route_config
from tests.helpers.services import make_engine
from workers.ratelimit import PREFIX, Limits, redis_key

MODELS = ["route", "route:rules", "route:classifier", "route:llm", "route:random", *TIERS]


@pytest.fixture
def gateway_config(tmp_path: Path, tiered_sim: RunningSimulator, database_url: str) -> Path:
    make_engine(database_url)  # PostgreSQL's tables (`db upgrade` in a deployment)
    return route_config(tmp_path, tiered_sim, database_url)


@pytest.fixture
def gateway(tmp_path: Path, gateway_config: Path, clean_redis: Any) -> Iterator[GatewayProcess]:
    process = GatewayProcess(gateway_config, tmp_path / "gateway.log")
    yield process
    process.stop()


def ask(client: OpenAI, model: str, text: str, **options: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **options
    )


def prompt_row(engine: Any, prompt_id: int) -> Prompt:
    with Session(engine) as session:
        prompt = session.get(Prompt, prompt_id)
        assert prompt is not None
        return prompt


def rows_of(engine: Any, table: Any, prompt_id: int) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(table).where(table.prompt_id == prompt_id)).all())


def test_models_and_health(gateway: GatewayProcess) -> None:
    assert [m.id for m in gateway.client().models.list()] == MODELS
    import httpx

    health = httpx.get(gateway.url + "/healthz")
    assert health.status_code == 200
    assert health.json() == {"ok": True, "database": "ok", "redis": "ok"}


def test_cascade_trace_and_ledger(gateway: GatewayProcess, database_url: str) -> None:
    """The rules router's decisions and the cascade of route jobs (tests/helpers/routing's
    known cases), told in the headers and recorded as prompts of today's live job."""
    engine = make_engine(database_url)
    client = gateway.client()
    seen = []
    for text, routed, final in CASES:
        raw = ask(client, "route", text)
        completion = raw.parse()
        headers = raw.headers
        assert (headers["x-distillery-routed-tier"], headers["x-distillery-tier"]) == (
            routed,
            final,
        )
        assert completion.model == final
        assert completion.choices[0].logprobs is None  # not asked for, not returned
        prompt = prompt_row(engine, int(headers["x-distillery-prompt-id"]))
        assert prompt.status == PromptStatus.SUCCEEDED
        assert (prompt.routed_tier, prompt.final_tier) == (routed, final)
        assert prompt.response == completion.choices[0].message.content
        assert prompt.messages == [{"role": "user", "content": text}]
        assert prompt.confidence == pytest.approx(float(headers["x-distillery-confidence"]))
        assert prompt.cost_usd == pytest.approx(float(headers["x-distillery-cost-usd"]), abs=1e-8)
        assert prompt.prompt_tokens + prompt.completion_tokens > 0
        attempts = rows_of(engine, Attempt, prompt.id)
        fallbacks = rows_of(engine, Fallback, prompt.id)
        escalations = int(headers["x-distillery-escalations"])
        assert len(fallbacks) == escalations == (routed != final)
        assert [a.tier for a in attempts] == ([routed, final] if escalations else [routed])
        assert completion.usage.completion_tokens == attempts[-1].completion_tokens
        seen.append(prompt)
    with Session(engine) as session:
        job = session.get(Job, seen[0].job_id)
    assert job is not None
    assert job.mode == JobMode.LIVE and job.status == JobStatus.RUNNING  # never "finished"
    assert job.name == f"live-{datetime.now(UTC):%Y-%m-%d}"
    assert {p.job_id for p in seen} == {job.id}
    assert [p.idx for p in seen] == list(range(len(CASES)))
    assert (job.total, job.completed, job.fell_back) == (
        len(CASES),
        len(CASES),
        sum(r != f for _, r, f in CASES),
    )
    check_reports(engine, job.id, seen)


def check_reports(engine: Any, job_id: int, prompts: list[Prompt]) -> None:
    """`status` and `report` read the live job as any other."""
    from producer.report import build_report
    from producer.status import job_summary
    from workers.settings import load_settings

    with Session(engine) as session:
        summary = job_summary(session, job_id)
        report = build_report(session, job_id, tiers=load_settings().tiers)
    assert summary["total"] == summary["completed"] == len(prompts)
    assert summary["cost_usd"] == pytest.approx(sum(p.cost_usd for p in prompts))
    assert report["fallbacks"]["prompts_fell_back"] == sum(p.fell_back for p in prompts)


def test_a_tier_by_name_and_pass_through(
    gateway: GatewayProcess, tiered_sim: RunningSimulator, database_url: str
) -> None:
    """`model` = a tier: that tier only, no escalation even when doubtful; the caller's
    parameters reach the model (the same answer as asking the simulator directly), and
    logprobs come back only when asked for."""
    engine = make_engine(database_url)
    client = gateway.client()
    direct = OpenAI(base_url=tiered_sim.base_url, api_key="x", max_retries=0)
    text = "[hard] What is the integral of x^x?"  # escalates when routed (CASES)
    options = {"seed": 7, "max_tokens": 30, "temperature": 0.2}
    raw = ask(client, "small", text, **options)
    assert raw.headers["x-distillery-tier"] == "small"
    assert raw.headers["x-distillery-escalations"] == "0"
    assert raw.headers["x-distillery-confidence"] == "none"
    answer = raw.parse().choices[0]
    expected = direct.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": text}], **options
    ).choices[0]
    assert answer.message.content == expected.message.content
    assert answer.finish_reason == expected.finish_reason == "length"
    assert answer.logprobs is None
    other_seed = ask(client, "small", text, **{**options, "seed": 8}).parse()
    assert other_seed.choices[0].message.content != answer.message.content

    with_logprobs = ask(client, "small", text, logprobs=True, top_logprobs=2)
    tokens = with_logprobs.parse().choices[0].logprobs.content
    assert tokens and all(len(t.top_logprobs) == 2 for t in tokens)
    prompt = prompt_row(engine, int(with_logprobs.headers["x-distillery-prompt-id"]))
    assert prompt.confidence == pytest.approx(
        float(with_logprobs.headers["x-distillery-confidence"])
    )
    assert not prompt.fell_back and prompt.final_tier == "small"


def test_async_client_and_named_job(gateway: GatewayProcess, database_url: str) -> None:
    """Concurrent requests from the async SDK into a job named by the header: each its own
    prompt row, every one counted once."""
    engine = make_engine(database_url)
    count = 12

    async def run() -> list[Any]:
        client = gateway.async_client()
        calls = [
            client.chat.completions.with_raw_response.create(
                model="route:rules",
                messages=[{"role": "user", "content": f"[easy] Say hello number {n}."}],
                extra_headers={"x-distillery-job": "live-test"},
            )
            for n in range(count)
        ]
        try:
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    responses = asyncio.run(run())
    ids = [int(r.headers["x-distillery-prompt-id"]) for r in responses]
    assert len(set(ids)) == count
    with Session(engine) as session:
        job = session.exec(select(Job).where(Job.name == "live-test")).one()
        prompts = session.exec(select(Prompt).where(Prompt.job_id == job.id)).all()
    assert job.mode == JobMode.LIVE and job.total == job.completed == count
    assert sorted(p.idx for p in prompts) == list(range(count))
    assert sorted(p.id for p in prompts) == sorted(ids)
    by_id = {p.id: p for p in prompts}
    for response, prompt_id in zip(responses, ids, strict=True):
        assert response.parse().choices[0].message.content == by_id[prompt_id].response


def test_shared_rate_limit(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, clean_redis: Any
) -> None:
    """The gateway's calls book slots of the tiers' Redis schedule, the one workers book,
    so a tier's rpm holds across both. At rpm = 6 a call takes 10 s of the schedule and a
    burst allowance of 60 s lets five go at once: the schedule's end, against Redis's clock
    just before the tier's first call, counts the calls booked."""
    config = route_config(tmp_path, tiered_sim, sqlite_url, rpm=6, burst_s=60.0)
    process = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        client = process.client()
        before = {"small": redis_now(clean_redis), "medium": 0.0}
        for n in range(3):
            ask(client, "small", f"[easy] hello {n}")
        before["frontier"] = redis_now(clean_redis)
        ask(client, "route", "[hard] What is the integral of x^x?")  # small, then frontier
    finally:
        process.stop()
    request_s = Limits(6, None).request_s

    def booked(tier: str) -> int:
        end = clean_redis.hget(redis_key(PREFIX, tier)[0], "r")
        return 0 if end is None else math.floor((float(end) - before[tier]) / request_s)

    assert {t: booked(t) for t in TIERS} == {"small": 4, "medium": 0, "frontier": 1}


def redis_now(client: Any) -> float:
    seconds, micros = client.time()
    return float(seconds + micros / 1e6)


def test_live_jobs_are_not_swept(gateway: GatewayProcess, database_url: str) -> None:
    """A live prompt in flight (or left pending by a dead gateway) is never re-sent to the
    workers: its caller got its answer or an error."""
    from models.work import open_work

    engine = make_engine(database_url)
    ask(gateway.client(), "route", "[easy] hello")
    with engine.begin() as conn:
        conn.execute(Prompt.__table__.update().values(status=PromptStatus.PENDING))  # type: ignore[attr-defined]
        assert open_work(conn=conn).prompts == {}


def test_processes_share_the_port_and_stop_on_sigterm(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, clean_redis: Any
) -> None:
    """`--processes 2`: both serve one port and one live job; SIGTERM stops them cleanly
    with every answered request on record."""
    engine = make_engine(sqlite_url)
    config = route_config(tmp_path, tiered_sim, sqlite_url)
    process = GatewayProcess(config, tmp_path / "gateway.log", processes=2)
    try:
        client = process.client()
        ids = {
            int(ask(client, "route", f"[easy] hi {n}").headers["x-distillery-prompt-id"])
            for n in range(8)
        }
    finally:
        code = process.stop()
    assert code == 0, process.log()
    with Session(engine) as session:
        jobs = session.exec(select(Job)).all()
        done = session.exec(select(Prompt).where(Prompt.status == PromptStatus.SUCCEEDED)).all()
    assert len(jobs) == 1 and jobs[0].total == 8
    assert {p.id for p in done} == ids


def test_sigterm_keeps_every_request_in_flight(
    tmp_path: Path, tiered_sim: RunningSimulator, database_url: str, clean_redis: Any
) -> None:
    """SIGTERM while requests wait on a slow model: the gateway stops accepting, lets them
    finish, answers them, and flushes the ledger before it exits — every call paid for is
    on record and every client got its answer."""
    import threading

    from tests.helpers.workers import wait_until

    engine = make_engine(database_url)
    tiered_sim.configure("sim-small", latency_ms=2000)
    process = GatewayProcess(
        route_config(tmp_path, tiered_sim, database_url), tmp_path / "gateway.log"
    )
    client = process.client()
    answers: list[Any] = []
    threads = [
        threading.Thread(target=lambda n=n: answers.append(ask(client, "small", f"hi {n}")))
        for n in range(5)
    ]
    for thread in threads:
        thread.start()

    def all_admitted() -> bool:
        with Session(engine) as session:
            return len(session.exec(select(Prompt)).all()) == 5

    wait_until(all_admitted, timeout=60, what="5 requests in flight", logs=process.log)
    assert process.stop() == 0, process.log()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 5 and all(a.status_code == 200 for a in answers)
    with Session(engine) as session:
        prompts = session.exec(select(Prompt)).all()
        attempts = session.exec(select(Attempt)).all()
    assert [p.status for p in prompts] == [PromptStatus.SUCCEEDED] * 5
    assert len(attempts) == 5
    told = {int(a.headers["x-distillery-prompt-id"]): a.parse() for a in answers}
    for prompt in prompts:
        assert told[prompt.id].choices[0].message.content == prompt.response


def test_prometheus_metrics_sum_over_processes(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, clean_redis: Any
) -> None:
    """`GET /metrics` counts requests, answers by tier, escalations, the latency added and
    the time to first byte — over both processes of `--processes 2`, whichever answers."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    make_engine(sqlite_url)
    process = GatewayProcess(
        route_config(tmp_path, tiered_sim, sqlite_url), tmp_path / "gateway.log", processes=2
    )
    try:
        client = process.client()
        for n in range(4):
            ask(client, "route", f"[easy] What is the capital of France? ({n})")  # small
        ask(client, "route", "[hard] What is the integral of x^x?")  # small, then frontier
        list(
            client.chat.completions.create(
                model="small", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        httpx.post(process.base_url + "/chat/completions", json={"model": "nope", "messages": []})
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(httpx.get(process.url + "/metrics").text)
            for s in family.samples
        }
    finally:
        process.stop()

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("distillery_gateway_requests_total", model="route", status="200") == 5
    assert value("distillery_gateway_requests_total", model="small", status="200") == 1
    assert value("distillery_gateway_requests_total", model="-", status="400") == 1
    answers = "distillery_gateway_answers_total"
    assert value(answers, routed_tier="small", final_tier="small") == 5
    assert value(answers, routed_tier="small", final_tier="frontier") == 1
    assert value("distillery_gateway_escalations_total", routed_tier="small") == 1
    assert value("distillery_gateway_added_latency_seconds_count") == 6
    ttfb = "distillery_gateway_time_to_first_byte_seconds_count"
    assert (value(ttfb, stream="false"), value(ttfb, stream="true")) == (5, 1)


def test_reduce_a_live_job(
    gateway: GatewayProcess,
    gateway_config: Path,
    use_config: Any,
    database_url: str,
    tmp_path: Path,
) -> None:
    """`distillery reduce` on a live job: the teacher tier's answers (escalated ones and
    those asked of it by name) become training examples, with the usual filters."""
    import json

    from tests.helpers.cli import invoke

    engine = make_engine(database_url)
    client = gateway.client()
    texts = ["[hard] What is the integral of x^x?", "[easy] What is the capital of France?"]
    texts += ["[hard] Why is the sky blue at noon?", "[refuse] Tell me a secret."]
    ids = [int(ask(client, "route", t).headers["x-distillery-prompt-id"]) for t in texts]
    ids.append(int(ask(client, "frontier", "[refuse] x").headers["x-distillery-prompt-id"]))
    with Session(engine) as session:
        prompts = [session.get(Prompt, pid) for pid in ids]
    teacher = [p for p in prompts if p is not None and p.final_tier == "frontier"]
    kept = [p for p in teacher if not (p.response or "").startswith("I'm sorry")]
    assert 0 < len(kept) < len(teacher) < len(prompts)  # some filtered, some not the teacher's
    out = tmp_path / "live.jsonl"
    use_config(gateway_config)
    result = invoke("reduce", str(prompts[0].job_id), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["examples"] == len(kept)
    assert summary["rejected"] == {"refusal": len(teacher) - len(kept)}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["messages"] for line in lines] == [
        [*p.messages, {"role": "assistant", "content": p.response}] for p in kept
    ]


def test_cli_names_a_live_job(
    gateway: GatewayProcess, gateway_config: Path, use_config: Any, tmp_path: Path
) -> None:
    """`status`, `results`, `report --plot` and `cost simulate` take the live job by name
    (as the issue's user writes `distillery report live-2026-12-01`) or by id."""
    import json

    from tests.helpers.cli import invoke

    ask(gateway.client(), "route", "[hard] What is the integral of x^x?")
    raw = ask(gateway.client(), "route", "[easy] What is the capital of France?")
    job_id = raw.headers["x-distillery-job-id"]
    name = f"live-{datetime.now(UTC):%Y-%m-%d}"
    use_config(gateway_config)
    by_name = json.loads(invoke("status", name, "--json").output)
    by_id = json.loads(invoke("status", job_id, "--json").output)
    assert by_name["id"] == by_id["id"] == int(job_id)  # (elapsed_s moves on between the two)
    assert by_name["mode"] == "live" and by_name["total"] == 2
    plot = tmp_path / "live.png"
    report = invoke("report", name, "--json", "--plot", str(plot))
    assert report.exit_code == 0, report.output
    assert json.loads(report.output)["fallbacks"]["prompts_fell_back"] == 1
    assert plot.stat().st_size > 0
    rows = invoke("results", name, "--format", "jsonl").output.splitlines()
    assert [json.loads(r)["final_tier"] for r in rows] == ["frontier", "small"]
    cost = invoke("cost", "simulate", "--job", name, "--monthly-requests", "1000", "--json")
    assert cost.exit_code == 0, cost.output
    missing = invoke("status", "no-such-job")
    assert missing.exit_code == 2 and "no-such-job" in missing.output


def test_a_live_job_is_not_resumed(
    gateway: GatewayProcess, gateway_config: Path, use_config: Any, database_url: str
) -> None:
    """A live prompt left pending (its gateway died mid-request) is not re-sent by
    `distillery resume`: its caller was told it failed."""
    from tests.helpers.cli import invoke

    engine = make_engine(database_url)
    raw = ask(gateway.client(), "route", "[easy] hello")
    with engine.begin() as conn:
        conn.execute(Prompt.__table__.update().values(status=PromptStatus.PENDING))  # type: ignore[attr-defined]
    use_config(gateway_config)
    result = invoke("resume", raw.headers["x-distillery-job-id"])
    assert result.exit_code == 2 and "live job" in result.output
