"""The gateway's error answers, each in OpenAI's shape (`{"error": {"message", "type",
"param", "code"}}`) so that the `openai` SDK raises its usual exception: bad requests
(400), a body over the limit (413), keys (401), every tier failing (502), the database or
Redis down (503). Real gateway processes, the simulator, Redis, SQLite and PostgreSQL."""

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlmodel import Session, select

from models import Attempt, AttemptStatus, Job, Prompt, PromptStatus
from simulator import RunningSimulator
from tests.helpers.config import write_config
from tests.helpers.gateway import GatewayProcess
from tests.helpers.routing import route_config
from tests.helpers.services import TEST_PG_ADMIN_URL, free_port, make_engine, postgres_database

USER = [{"role": "user", "content": "[easy] What is 2+2?"}]


def start(tmp_path: Path, config: Path, **env: str) -> GatewayProcess:
    log = tmp_path / f"gateway-{len(list(tmp_path.glob('gateway-*.log')))}.log"
    return GatewayProcess(config, log, **env)


@pytest.fixture
def config(tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str) -> Path:
    return route_config(tmp_path, tiered_sim, sqlite_url, max_retries=0)


@pytest.fixture
def gateway(tmp_path: Path, config: Path, clean_redis: Any) -> Iterator[GatewayProcess]:
    process = start(tmp_path, config)
    yield process
    process.stop()


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def post(gateway: GatewayProcess, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        gateway.base_url + "/chat/completions",
        content=content,
        headers={"content-type": "application/json", **headers},
        timeout=30,
    )


def test_bad_requests_are_400(gateway: GatewayProcess) -> None:
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(model="gpt-5", messages=USER)  # type: ignore[arg-type]
    assert unknown.value.code == "model_not_found" and "route:rules" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="route", messages=[])
    assert empty.value.param == "messages"
    cases = {
        b'{"model": "route"}': "messages",
        b'{"model": "route", "messages": "hi"}': "messages",
        b'{"model": "route", "messages": [{"content": "no role"}]}': "messages[0]",
        b'{"messages": [{"role": "user", "content": "hi"}]}': "model",
        b'{"model": "route", "messages": [{"role": "user", "content": "x"}], "n": 2}': "n",
        b'{"model": "small", "messages": [{"role": "user", "content": "x"}], "stream": "y"}': (
            "stream"
        ),
    }
    for body, param in cases.items():
        response = post(gateway, body)
        assert response.status_code == 400, body
        assert error_of(response)["param"] == param
    for body in (b"{not json", b"[1, 2]", "caf\xe9".encode("latin-1")):
        response = post(gateway, body)
        assert response.status_code == 400
        assert error_of(response)["type"] == "invalid_request_error"


def test_nothing_is_recorded_for_a_bad_request(gateway: GatewayProcess, sqlite_url: str) -> None:
    post(gateway, b'{"model": "route", "messages": []}')
    body = json.dumps({"model": "route", "messages": USER}).encode()
    for name in ("two words", "-leading-dash", "tab\there", "x" * 201, "a;b"):
        response = post(gateway, body, **{"x-distillery-job": name})
        assert response.status_code == 400, name
        assert "x-distillery-job" in error_of(response)["message"]
    with Session(make_engine(sqlite_url)) as session:
        assert session.exec(select(Prompt)).all() == []
        assert session.exec(select(Job)).all() == []


def test_the_live_job_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch, config: Path, sqlite_url: str
) -> None:
    """Each new `x-distillery-job` name opens a job; a process remembers only the most
    recent MAX_CACHED_JOBS names, and a forgotten name finds its job again in the ledger."""
    from types import SimpleNamespace

    from producer.gateway import app
    from workers.job_settings import RouteSettings
    from workers.settings import load_settings

    monkeypatch.setattr(app, "MAX_CACHED_JOBS", 3)
    settings = load_settings(config)
    ctx: Any = SimpleNamespace(ledger=SimpleNamespace(engine=make_engine(sqlite_url)))
    gateway = app.Gateway(settings, ctx, RouteSettings.from_config(settings), [])

    async def open_all() -> list[int]:
        first = [await gateway.job_id(f"job-{n}") for n in range(5)]
        return [*first, await gateway.job_id("job-0"), await gateway.job_id("job-4")]

    ids = asyncio.run(open_all())
    assert len(set(ids[:5])) == 5 and ids[5:] == [ids[0], ids[4]]
    assert list(gateway.live_jobs) == ["job-3", "job-0", "job-4"]
    with Session(make_engine(sqlite_url)) as session:
        assert len(session.exec(select(Job)).all()) == 5


def test_a_body_over_the_limit_is_413(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, clean_redis: Any
) -> None:
    config = route_config(tmp_path, tiered_sim, sqlite_url)
    with config.open("a") as f:
        f.write("\n[gateway]\nmax_body_bytes = 4096\n")
    process = start(tmp_path, config)
    try:
        client = process.client()
        client.chat.completions.create(model="small", messages=USER)  # under the limit
        with pytest.raises(openai.APIStatusError) as over:
            client.chat.completions.create(
                model="small", messages=[{"role": "user", "content": "word " * 2000}]
            )
        assert over.value.status_code == 413
        assert "4096" in over.value.message
    finally:
        process.stop()


def test_keys(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, clean_redis: Any
) -> None:
    """With keys set every /v1 request needs one; the key is never logged or stored, only
    a short hash of it on the prompt row."""
    config = route_config(tmp_path, tiered_sim, sqlite_url)
    process = start(tmp_path, config, DISTILLERY_GATEWAY_KEYS="key-one-1234, key-two-5678")
    try:
        wrong = openai.OpenAI(base_url=process.base_url, api_key="key-three-000", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.chat.completions.create(model="small", messages=USER)
        assert refused.value.code == "invalid_api_key"
        assert "key-three" not in refused.value.message
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        missing = post(process, json.dumps({"model": "small", "messages": USER}).encode())
        assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
        assert httpx.get(process.url + "/healthz").status_code == 200  # probes need no key

        right = openai.OpenAI(base_url=process.base_url, api_key="key-two-5678", max_retries=0)
        raw = right.chat.completions.with_raw_response.create(model="small", messages=USER)
        prompt_id = int(raw.headers["x-distillery-prompt-id"])
        assert next(m.id for m in right.models.list()) == "route"
    finally:
        process.stop()
    engine = make_engine(sqlite_url)
    with Session(engine) as session:
        prompt = session.get(Prompt, prompt_id)
        assert prompt is not None
        rows = [p.model_dump_json() for p in session.exec(select(Prompt)).all()]
        rows += [a.model_dump_json() for a in session.exec(select(Attempt)).all()]
    assert prompt.meta == {
        "model": "small",
        "key_sha256": hashlib.sha256(b"key-two-5678").hexdigest()[:12],
    }
    for secret in ("key-one-1234", "key-two-5678", "key-three-000"):
        assert secret not in process.log()
        assert not any(secret in row for row in rows)


def test_every_tier_failing_is_502_with_each_reason(
    gateway: GatewayProcess, tiered_sim: RunningSimulator, sqlite_url: str
) -> None:
    tiered_sim.fail_next(10, status=500)
    with pytest.raises(openai.APIStatusError) as failed:
        gateway.client().chat.completions.create(
            model="route", messages=[{"role": "user", "content": "[hard] What is x^x?"}]
        )
    error = failed.value
    assert error.status_code == 502 and error.code == "all_tiers_failed"
    assert "small: error: HTTP 500" in error.message
    assert "frontier: error: HTTP 500" in error.message
    prompt_id = int(error.response.headers["x-distillery-prompt-id"])
    assert error.response.headers["x-distillery-escalations"] == "1"
    with Session(make_engine(sqlite_url)) as session:
        prompt = session.get(Prompt, prompt_id)
        attempts = session.exec(select(Attempt).where(Attempt.prompt_id == prompt_id)).all()
    assert prompt is not None and prompt.status == PromptStatus.FAILED
    assert (prompt.routed_tier, prompt.final_tier, prompt.fell_back) == ("small", "frontier", True)
    assert [(a.tier, a.status, a.http_status) for a in attempts] == [
        ("small", AttemptStatus.ERROR, 500),
        ("frontier", AttemptStatus.ERROR, 500),
    ]


def test_redis_down_is_503_and_healthz_says_so(
    tmp_path: Path, config: Path, clean_redis: Any
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    process = start(tmp_path, config, REDIS_URL=dead)
    try:
        health = httpx.get(process.url + "/healthz", timeout=30)
        assert health.status_code == 503
        assert health.json()["database"] == "ok"
        assert health.json()["redis"].startswith("unreachable")
        with pytest.raises(openai.APIStatusError) as down:
            process.client().chat.completions.create(model="small", messages=USER)
        assert down.value.status_code == 503 and "Redis" in down.value.message
    finally:
        process.stop()


def test_database_down_is_503_and_healthz_says_so(
    tmp_path: Path, tiered_sim: RunningSimulator, clean_redis: Any
) -> None:
    import psycopg

    databases = postgres_database()
    url = next(databases)
    try:
        make_engine(url)
        process = start(tmp_path, route_config(tmp_path, tiered_sim, url))
        try:
            process.client().chat.completions.create(model="small", messages=USER)
            with psycopg.connect(TEST_PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            health = httpx.get(process.url + "/healthz", timeout=30)
            assert health.status_code == 503
            assert health.json()["redis"] == "ok"
            assert health.json()["database"].startswith("unreachable")
            with pytest.raises(openai.APIStatusError) as down:
                process.client().chat.completions.create(model="small", messages=USER)
            assert down.value.status_code == 503 and "database" in down.value.message
        finally:
            process.stop()
    finally:
        databases.close()


@pytest.mark.parametrize("policy", ["reject", "truncate"])
def test_messages_over_the_context_follow_submits_policy(
    tmp_path: Path, tiered_sim: RunningSimulator, sqlite_url: str, clean_redis: Any, policy: str
) -> None:
    """A message list over the tiers' context: `reject` is a 400 with nothing recorded,
    `truncate` answers from the head of the last user message and records the cut."""
    config = route_config(
        tmp_path, tiered_sim, sqlite_url, context_tokens=80, context_policy=policy
    )
    process = start(tmp_path, config)
    long = [{"role": "user", "content": "[easy] Please summarise: " + "lorem ipsum " * 200}]
    try:
        client = process.client()
        client.chat.completions.create(model="route", messages=USER)  # fits
        if policy == "reject":
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="small", messages=long)
            assert refused.value.code == "context_length_exceeded"
            assert "context of 80" in refused.value.message
        else:
            raw = client.chat.completions.with_raw_response.create(model="route", messages=long)
            prompt_id = int(raw.headers["x-distillery-prompt-id"])
    finally:
        process.stop()
    with Session(make_engine(sqlite_url)) as session:
        prompts = session.exec(select(Prompt)).all()
    if policy == "reject":
        assert len(prompts) == 1
        return
    [cut] = [p for p in prompts if p.id == prompt_id]
    assert cut.status == PromptStatus.SUCCEEDED
    kept = cut.messages[-1]["content"]
    assert long[0]["content"].startswith(kept) and len(kept) < len(long[0]["content"])
    record = (cut.meta or {})["distillery_truncated"]
    assert record["context_tokens"] == 80 and record["kept_chars"] == len(kept)


def test_upstream_keys_never_reach_the_client_logs_or_ledger(
    tmp_path: Path, sqlite_url: str, clean_redis: Any
) -> None:
    """Every tier answers 401 echoing the key it was sent (as some proxies do): the 502 the
    client gets, its headers, the gateway's log and the ledger show the key nowhere."""
    import threading
    from http.server import ThreadingHTTPServer

    from tests.test_secrets import _EchoingKeyHandler

    secret = "sk-upstream-0123456789abcdef"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingKeyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = write_config(
            tmp_path / "distillery.toml",
            base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
            database_url=sqlite_url,
            api_key_env="UPSTREAM_KEY",
            max_retries=0,
        )
        process = start(tmp_path, config, UPSTREAM_KEY=secret)
        try:
            response = post(process, json.dumps({"model": "route", "messages": USER}).encode())
        finally:
            process.stop()
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 502
    assert "Incorrect API key provided: [redacted]" in error_of(response)["message"]
    assert secret not in response.text and secret not in str(response.headers)
    assert secret not in process.log()
    with Session(make_engine(sqlite_url)) as session:
        rows = [p.model_dump_json() for p in session.exec(select(Prompt)).all()]
        rows += [a.model_dump_json() for a in session.exec(select(Attempt)).all()]
    assert rows and not any(secret in row for row in rows)
