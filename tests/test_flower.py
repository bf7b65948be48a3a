"""Flower, started as docker-compose.yml starts it, against the test Redis while real tier
workers run: its HTTP API shows each worker and each tier's queue with its true length, and
refuses requests without the password (FLOWER_UNAUTHENTICATED_API is never set)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator import ModelBehaviour, RunningSimulator, SimConfig, start_in_thread
from tests.helpers.config import TIERS, write_config
from tests.helpers.flower import PASSWORD, USER, Flower, start_flower, stop
from tests.helpers.pipeline import submit_file, write_jsonl
from tests.helpers.workers import Workers, wait_until

# Messages left waiting in each tier's queue while its worker holds one more.
WAITING = {"small": 2, "medium": 3, "frontier": 4}
HANG_S = 600  # longer than the test; stopping the simulator releases every hanging call


@pytest.fixture
def hanging_sim(workers: Workers) -> Iterator[RunningSimulator]:
    """Every call hangs until the simulator stops. Requesting `workers` makes this stop
    first, which releases the workers' calls so that they can shut down quickly."""
    behaviour = ModelBehaviour(timeout_rate=1.0, hang_s=HANG_S)
    with start_in_thread(SimConfig(default=behaviour)) as running:
        yield running


def fill_queues(tmp_path: Path, config: Path) -> None:
    """One teacher job per tier: each worker (concurrency 1, prefetch 1) takes one message
    and hangs on its call; the rest wait in the queue, a known number."""
    for tier, waiting in WAITING.items():
        rows = [{"prompt": f"Explain {tier} thing {n}."} for n in range(waiting + 1)]
        source = write_jsonl(tmp_path / f"{tier}.jsonl", rows)
        submit_file(source, config, overrides={"tier": tier})


def queues_settled(redis_client: Any) -> bool:
    lengths = {tier: redis_client.llen(tier) for tier in TIERS}
    return lengths == WAITING and redis_client.hlen("unacked") == len(TIERS)


def test_flower_shows_workers_and_queue_lengths(
    tmp_path: Path, workers: Workers, hanging_sim: RunningSimulator, clean_redis: Any
) -> None:
    config = write_config(
        tmp_path / "distillery.toml",
        base_url=hanging_sim.base_url,
        database_url=f"sqlite:///{tmp_path / 'flower.db'}",
        enqueue_batch=1,  # one prompt per message: queue lengths are prompt counts
        max_retries=0,
        timeout_s=HANG_S,
    )
    for tier in TIERS:
        workers.start(config, tiers=tier, concurrency=1)
    # The password from the environment, as docker-compose.yml gives it.
    flower = start_flower(tmp_path, config, [], {"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})
    try:
        fill_queues(tmp_path, config)
        wait_until(
            lambda: queues_settled(clean_redis),
            timeout=120,
            what="each worker to hold one message",
            logs=workers.log_text,
        )
        check_workers_listed(flower)
        check_queue_lengths(flower, clean_redis)
        check_refused_without_password(flower)
    finally:
        stop(flower)


def check_workers_listed(flower: Flower) -> None:
    found: dict[str, Any] = {}

    def all_three() -> bool:
        found.update(flower.get("/api/workers?refresh=1").raise_for_status().json())
        return {name.split("-", 1)[0] for name in found} >= set(TIERS)

    wait_until(all_three, timeout=60, what="Flower to list the workers", logs=flower.log_text)
    for name, info in found.items():
        tier = name.split("-", 1)[0]
        assert {q["name"] for q in info["active_queues"]} == {tier, "control"}, name


def check_queue_lengths(flower: Flower, redis_client: Any) -> None:
    active = flower.get("/api/queues/length").raise_for_status().json()["active_queues"]
    lengths = {queue["name"]: queue["messages"] for queue in active}
    assert lengths == {**WAITING, "control": 0}
    assert lengths == {name: redis_client.llen(name) for name in lengths}
    broker_page = flower.get("/broker")
    assert broker_page.status_code == 200
    assert all(f">{tier}<" in broker_page.text for tier in TIERS)


def check_refused_without_password(flower: Flower) -> None:
    for path in ("/api/workers", "/api/queues/length", "/", "/broker"):
        assert flower.get(path, auth=None).status_code == 401, path
        wrong = httpx.BasicAuth(USER, "wrong")
        assert flower.get(path, auth=wrong).status_code == 401, path


def test_basic_auth_option_protects_the_api(tmp_path: Path, clean_redis: Any) -> None:
    """The command-line form of the password works the same."""
    config = write_config(
        tmp_path / "distillery.toml",
        base_url="http://127.0.0.1:9/v1",
        database_url=f"sqlite:///{tmp_path / 'flower.db'}",
    )
    flower = start_flower(tmp_path, config, [f"--basic-auth={USER}:{PASSWORD}"], {})
    try:
        assert flower.get("/api/workers", auth=None).status_code == 401
        assert flower.get("/api/workers").status_code == 200
    finally:
        stop(flower)
