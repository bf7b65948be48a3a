"""Metrics for dashboards: known ledger rows in real SQLite and PostgreSQL and known messages
in real Redis give known numbers in the Prometheus exposition; the real `metrics` command
serves them over HTTP."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from models import (
    Attempt,
    AttemptPurpose,
    AttemptStatus,
    Fallback,
    FallbackReason,
    Job,
    JobMode,
    JobStatus,
    Prompt,
    PromptStatus,
    get_engine,
    session_scope,
)
from producer.metrics import LATENCY_BUCKETS_MS, make_registry
from tests.helpers.config import TIERS
from tests.helpers.services import TEST_REDIS_URL, free_port, make_engine
from tests.helpers.workers import wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Call(NamedTuple):
    tier: str
    status: AttemptStatus
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    purpose: AttemptPurpose = AttemptPurpose.ANSWER


OK, ERROR, TIMEOUT = AttemptStatus.OK, AttemptStatus.ERROR, AttemptStatus.TIMEOUT
# Latencies on and around bucket bounds: Prometheus buckets are "less than or equal".
CALLS = [
    Call("small", OK, 50.0, 10, 20, 0.003),
    Call("small", OK, 50.001, 11, 21, 0.0032),
    Call("small", ERROR, 12.5),
    Call("small", OK, 5.0, 7, 1, 0.0008, AttemptPurpose.ROUTE),
    Call("medium", OK, 900.0, 30, 60, 0.027),
    Call("frontier", OK, 2500.0, 40, 400, 2.2),
    Call("frontier", OK, 130_000.0, 40, 500, 2.7),
    Call("frontier", TIMEOUT, 60_000.0),
]
FALLBACKS = [
    ("small", "frontier", FallbackReason.LOW_CONFIDENCE),
    ("small", "frontier", FallbackReason.LOW_CONFIDENCE),
    ("small", "frontier", FallbackReason.ERROR),
    ("medium", "frontier", FallbackReason.TIMEOUT),
]
# (job mode, job status, its prompts' statuses)
JOBS = [
    (JobMode.TEACHER, JobStatus.FINISHED, [PromptStatus.SUCCEEDED] * 3),
    (
        JobMode.ROUTE,
        JobStatus.RUNNING,
        [PromptStatus.SUCCEEDED, PromptStatus.PENDING, PromptStatus.PENDING, PromptStatus.FAILED],
    ),
    (JobMode.ROUTE, JobStatus.CANCELLED, [PromptStatus.CANCELLED, PromptStatus.SUCCEEDED]),
]


def insert_ledger(engine: Any) -> None:
    with session_scope(engine) as session:
        prompt_ids: list[int] = []
        job_ids: list[int] = []
        for mode, status, prompt_statuses in JOBS:
            job = Job(mode=mode, status=status, total=len(prompt_statuses))
            session.add(job)
            session.flush()
            assert job.id is not None
            job_ids.append(job.id)
            for idx, prompt_status in enumerate(prompt_statuses):
                prompt = Prompt(job_id=job.id, idx=idx, messages=[], status=prompt_status)
                session.add(prompt)
                session.flush()
                assert prompt.id is not None
                prompt_ids.append(prompt.id)
        for n, call in enumerate(CALLS):
            session.add(
                Attempt(prompt_id=prompt_ids[n % len(prompt_ids)], model="m", **call._asdict())
            )
        for n, (from_tier, to_tier, reason) in enumerate(FALLBACKS):
            session.add(
                Fallback(
                    job_id=job_ids[1],
                    prompt_id=prompt_ids[n],
                    from_tier=from_tier,
                    to_tier=to_tier,
                    reason=reason,
                )
            )


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def scrape(registry: Any) -> Samples:
    return parse(generate_latest(registry).decode())


@pytest.fixture
def ledger(database_url: str) -> Any:
    engine = make_engine(database_url)
    insert_ledger(engine)
    return engine


def test_call_counters_match_the_rows(ledger: Any) -> None:
    samples = scrape(make_registry(ledger, tiers=TIERS))
    assert value(samples, "distillery_ledger_up") == 1
    expected = Counter((c.tier, c.status.value, c.purpose.value) for c in CALLS)
    assert series(samples, "distillery_calls_total") == {
        frozenset({"tier": t, "status": s, "purpose": p}.items()): n
        for (t, s, p), n in expected.items()
    }
    for tier in TIERS:
        mine = [c for c in CALLS if c.tier == tier]
        prompt = sum(c.prompt_tokens for c in mine)
        completion = sum(c.completion_tokens for c in mine)
        assert value(samples, "distillery_tokens_total", tier=tier, kind="prompt") == prompt
        assert value(samples, "distillery_tokens_total", tier=tier, kind="completion") == (
            completion
        )
        cost = value(samples, "distillery_cost_usd_total", tier=tier)
        assert cost == pytest.approx(sum(c.cost_usd for c in mine))
    assert value(samples, "distillery_tokens_total", tier="small", kind="prompt") == 28


def test_latency_histogram_counts_each_bucket(ledger: Any) -> None:
    samples = scrape(make_registry(ledger, tiers=TIERS))
    for tier in TIERS:
        latencies = [c.latency_ms for c in CALLS if c.tier == tier]
        for bound in LATENCY_BUCKETS_MS:
            le = repr(bound / 1000)
            count = value(samples, "distillery_call_latency_seconds_bucket", tier=tier, le=le)
            assert count == sum(ms <= bound for ms in latencies), (tier, le)
        inf = value(samples, "distillery_call_latency_seconds_bucket", tier=tier, le="+Inf")
        assert inf == value(samples, "distillery_call_latency_seconds_count", tier=tier)
        assert inf == len(latencies)
        total = value(samples, "distillery_call_latency_seconds_sum", tier=tier)
        assert total == pytest.approx(sum(latencies) / 1000)
    # 50 ms is in the 0.05 s bucket, 50.001 ms is not; 130 s is only in +Inf.
    small = {"tier": "small"}
    assert value(samples, "distillery_call_latency_seconds_bucket", le="0.05", **small) == 3
    assert value(samples, "distillery_call_latency_seconds_bucket", le="0.1", **small) == 4
    frontier = {"tier": "frontier"}
    assert value(samples, "distillery_call_latency_seconds_bucket", le="120.0", **frontier) == 2


def test_fallbacks_prompts_and_jobs(ledger: Any) -> None:
    samples = scrape(make_registry(ledger, tiers=TIERS))
    expected_fallbacks = Counter((f, t, r.value) for f, t, r in FALLBACKS)
    assert series(samples, "distillery_fallbacks_total") == {
        frozenset({"from_tier": f, "to_tier": t, "reason": r}.items()): n
        for (f, t, r), n in expected_fallbacks.items()
    }
    expected_prompts: Counter[tuple[str, str, str]] = Counter()
    for mode, job_status, statuses in JOBS:
        for status in statuses:
            expected_prompts[(job_status.value, mode.value, status.value)] += 1
    assert series(samples, "distillery_prompts") == {
        frozenset({"job_status": j, "mode": m, "status": s}.items()): n
        for (j, m, s), n in expected_prompts.items()
    }
    backlog = {"job_status": "running", "mode": "route", "status": "pending"}
    assert value(samples, "distillery_prompts", **backlog) == 2
    jobs = Counter((mode.value, status.value) for mode, status, _ in JOBS)
    assert series(samples, "distillery_jobs") == {
        frozenset({"mode": m, "status": s}.items()): n for (m, s), n in jobs.items()
    }


def test_configured_tiers_without_calls_show_zeros(sqlite_url: str) -> None:
    samples = scrape(make_registry(make_engine(sqlite_url), tiers=TIERS))
    assert series(samples, "distillery_calls_total") == {}
    for tier in TIERS:
        assert value(samples, "distillery_cost_usd_total", tier=tier) == 0
        assert value(samples, "distillery_call_latency_seconds_count", tier=tier) == 0


def test_queue_lengths_from_the_broker(sqlite_url: str, clean_redis: Any) -> None:
    from workers.app import app

    waiting = {"small": 3, "medium": 1, "frontier": 0, "control": 2}
    for queue, count in waiting.items():
        for n in range(count):
            app.send_task("distillery.answer", ([n], queue), queue=queue)
    # a message with a priority lives in another Redis list; it waits all the same
    app.send_task("distillery.answer", ([9], "frontier"), queue="frontier", priority=9)
    waiting["frontier"] += 1

    registry = make_registry(
        make_engine(sqlite_url),
        redis_client=clean_redis,
        tiers=TIERS,
        queues=[*TIERS, "control"],
    )
    samples = scrape(registry)
    assert value(samples, "distillery_broker_up") == 1
    assert series(samples, "distillery_queue_length") == {
        frozenset({"queue": q}.items()): n for q, n in waiting.items()
    }
    assert value(samples, "distillery_broker_unacked_messages") == 0


def test_an_unreachable_source_is_reported_not_raised(tmp_path: Path) -> None:
    import redis

    no_tables = get_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    nobody = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    samples = scrape(make_registry(no_tables, redis_client=nobody, tiers=TIERS))
    assert value(samples, "distillery_ledger_up") == 0
    assert value(samples, "distillery_broker_up") == 0
    assert not series(samples, "distillery_cost_usd_total")
    assert not series(samples, "distillery_queue_length")


def test_metrics_command_serves_http(tmp_path: Path, clean_redis: Any) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    insert_ledger(make_engine(url))
    clean_redis.rpush("small", b"{}")  # LLEN only counts; the payload does not matter here
    port = free_port()
    log = (tmp_path / "metrics.log").open("wb")
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": TEST_REDIS_URL}
    command = [sys.executable, "-m", "producer.cli", "metrics", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        text = _get_when_up(f"http://127.0.0.1:{port}/metrics", process, tmp_path / "metrics.log")
    finally:
        process.terminate()
        process.wait(timeout=10)
    samples = parse(text)
    assert value(samples, "distillery_ledger_up") == value(samples, "distillery_broker_up") == 1
    frontier_cost = sum(c.cost_usd for c in CALLS if c.tier == "frontier")
    assert value(samples, "distillery_cost_usd_total", tier="frontier") == pytest.approx(
        frontier_cost
    )
    assert value(samples, "distillery_queue_length", queue="small") == 1
    assert value(samples, "distillery_queue_length", queue="control") == 0


def _get_when_up(url: str, process: subprocess.Popen[bytes], log: Path) -> str:
    answer: dict[str, str] = {}

    def answered() -> bool:
        if process.poll() is not None:
            pytest.fail(f"`metrics` exited with {process.returncode}:\n{log.read_text()}")
        try:
            answer["text"] = httpx.get(url, timeout=5).raise_for_status().text
        except httpx.TransportError:
            return False
        return True

    wait_until(answered, timeout=60, what="the metrics endpoint", logs=log.read_text)
    return answer["text"]
