"""Leases and the sweeper's rules, against real Redis and SQLite (no worker processes): a
ticket's life from publish to release, leases surviving a flush through the heartbeat,
the sweeper's two looks, RabbitMQ's redelivery, and the cap on re-sends. The end-to-end
faults are in tests/test_recovery.py."""

import json
import time
from pathlib import Path
from typing import Any

import pytest

from models import JobMode
from simulator import RunningSimulator
from tests.helpers.faults import fault_config, queued_ids, submit_prompts
from tests.helpers.pipeline import write_jsonl
from workers.leases import (
    QUEUED,
    Coverage,
    Holder,
    LeaseStore,
    alive_key,
    held_key,
)
from workers.settings import RecoveryConfig, Settings
from workers.sweeper import Orphans, Sweeper, broker_redelivers, orphans

FAST = RecoveryConfig(heartbeat_s=0.1, lease_s=0.3, sweep_s=0.2, max_requeues=2)


def cover(*prompt_ids: int) -> str:
    return json.dumps({"prompts": list(prompt_ids)})


@pytest.fixture
def store(clean_redis: Any) -> LeaseStore:
    from tests.helpers.services import TEST_REDIS_URL

    return LeaseStore.from_url(TEST_REDIS_URL)


def test_a_ticket_is_queued_then_held_then_released(store: LeaseStore) -> None:
    store.queue("t1:0", cover(1, 2))
    assert store.look().prompts == {1, 2}
    holder = Holder(store, FAST, "w1")
    try:
        holder.take("t1:0", cover(1, 2))
        assert store.queued() == {}
        assert store.look().prompts == {1, 2}  # held now, by a live worker
        store.queue("t1:0", cover(1, 2))  # a publisher slower than the worker
        assert store.queued() == {}, "a ticket already taken must not be queued again"
        holder.release("t1:0")
        assert store.look().prompts == set()
    finally:
        holder.close()


def test_the_heartbeat_rewrites_leases_redis_lost(store: LeaseStore, clean_redis: Any) -> None:
    holder = Holder(store, FAST, "w1")
    try:
        holder.take("t1:0", cover(7))
        clean_redis.flushdb()
        assert store.look().prompts == set()
        time.sleep(FAST.heartbeat_s * 3)
        assert store.look().prompts == {7}
    finally:
        holder.close()


def test_a_silent_worker_is_dead_and_a_warm_stop_requeues(
    store: LeaseStore, clean_redis: Any
) -> None:
    store.take("dead", "t1:0", cover(3), lease_ms=1)  # a worker that never beats again
    time.sleep(0.05)
    seen = store.look()
    assert seen.prompts == set() and seen.dead == {"dead": {"t1:0": cover(3)}}

    holder = Holder(store, FAST, "w2")
    holder.take("t2:0", cover(4))
    holder.close()  # its unstarted message went back to the queue with it
    assert store.queued() == {"t2:0": cover(4)}
    assert not clean_redis.exists(held_key("w2"), alive_key("w2"))


def test_orphans_need_two_looks_and_rabbitmq_redelivers() -> None:
    from models.work import OpenWork

    work = OpenWork(prompts={1: {10, 11, 12}}, unreduced={5})
    coverage = Coverage(prompts={10}, dead={"gone": {"t:0": cover(11)}})
    first = orphans(work, coverage, redelivered=False)
    assert first.prompts == {1: {11, 12}} and first.reduces == {5}
    assert first.held_by_dead().prompts == {1: {11}}
    later = Orphans({1: {12, 13}}, set(), {})  # 11 ended meanwhile; 13 is new
    both = first & later
    assert both.prompts == {1: {12}} and both.reduces == set()

    coverage = Coverage(prompts={10}, dead={"gone": {"t:0": cover(11)}})
    redelivered = orphans(work, coverage, redelivered=True)
    assert redelivered.prompts == {1: {12}}  # the dead worker's message is queued again
    assert redelivered.held_by_dead().prompts == {}

    assert broker_redelivers("amqp://guest:guest@127.0.0.1:5672//")
    assert not broker_redelivers("redis://127.0.0.1:6379/0")


def test_the_sweeper_resends_lost_prompts_up_to_the_cap(
    tmp_path: Path, sim: RunningSimulator, sqlite_url: str, store: LeaseStore, clean_redis: Any
) -> None:
    """Lost messages (their tickets gone too) are re-sent by one sweep, as resume would
    send them; after `max_requeues` re-sends the prompts are left for a human."""
    from workers.app import app
    from workers.settings import load_settings

    config = fault_config(tmp_path, sim, sqlite_url, batch=5)
    job_id, engine = submit_prompts(tmp_path, config, count=12)
    settings: Settings = load_settings(config).model_copy(update={"recovery": FAST})
    sweeper = Sweeper(store=store, engine=engine, app=app, settings=settings)
    assert sweeper.sweep().empty  # queued: nothing to do
    for _ in range(FAST.max_requeues):
        clean_redis.delete("frontier", QUEUED)  # lost, with every trace of them
        found = sweeper.sweep()
        assert sum(len(ids) for ids in found.prompts.values()) == 12
        assert sorted(queued_ids(clean_redis)) == sorted(found.prompts[job_id])
    clean_redis.delete("frontier", QUEUED)
    sweeper.sweep()
    assert queued_ids(clean_redis) == [], "past the cap, nothing is re-sent"


def test_settings_take_an_amqp_broker_beside_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    amqp = "amqp://guest:guest@127.0.0.1:5672//"
    monkeypatch.delenv("REDIS_URL")  # the environment wins over the values given here
    monkeypatch.setenv("BROKER_URL", amqp)
    assert Settings(redis_url="redis://127.0.0.1:6379/0").broker_url == amqp
    monkeypatch.delenv("BROKER_URL")
    assert Settings(redis_url="redis://h:6379/0", broker_url=amqp).broker_url == amqp
    assert Settings(redis_url="redis://h:6379/0").broker_url == "redis://h:6379/0"
    with pytest.raises(ValueError, match="needs redis_url"):
        Settings(broker_url=amqp)
    with pytest.raises(ValueError, match="half of lease_s"):
        RecoveryConfig(heartbeat_s=6, lease_s=10)


def test_route_prompts_resend_to_the_router(
    tmp_path: Path, sim: RunningSimulator, sqlite_url: str, store: LeaseStore, clean_redis: Any
) -> None:
    """Unrouted prompts of a route job go back to the route step (the control queue)."""
    from tests.helpers.pipeline import submit_file
    from workers.app import app
    from workers.settings import load_settings

    config = fault_config(tmp_path, sim, sqlite_url, batch=5)
    rows = [{"prompt": f"What is {n} plus {n}?"} for n in range(6)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    job_id, engine, _ = submit_file(path, config, mode=JobMode.ROUTE, router="rules")
    clean_redis.delete("control", QUEUED)
    settings = load_settings(config).model_copy(update={"recovery": FAST})
    found = Sweeper(store=store, engine=engine, app=app, settings=settings).sweep()
    assert len(found.prompts[job_id]) == len(rows)
    assert len(queued_ids(clean_redis, "control")) == len(rows)


def test_what_a_dead_worker_held_is_resent_at_the_first_look(
    tmp_path: Path, sim: RunningSimulator, sqlite_url: str, store: LeaseStore, clean_redis: Any
) -> None:
    """A dead worker's alive key expired after a whole lease of silence, so what it held
    needs no second look; prompts nobody ever held (their messages lost) still do."""
    from workers.app import app
    from workers.settings import load_settings

    config = fault_config(tmp_path, sim, sqlite_url, batch=5)
    job_id, engine = submit_prompts(tmp_path, config, count=10)
    ids = sorted(queued_ids(clean_redis))
    clean_redis.delete("frontier", QUEUED)
    store.take("dead", "t1:0", cover(*ids[:6]), lease_ms=1)  # it took 6, then died
    time.sleep(0.05)
    settings = load_settings(config).model_copy(update={"recovery": FAST})
    sweeper = Sweeper(store=store, engine=engine, app=app, settings=settings)

    first = sweeper.look()
    assert first.prompts == {job_id: set(ids)}
    now = first.held_by_dead()
    assert now.prompts == {job_id: set(ids[:6])} and set(now.dead) == {"dead"}
    assert (first - now).prompts == {job_id: set(ids[6:])}
    found = sweeper.sweep()
    assert found.prompts == {job_id: set(ids)}
    assert sorted(queued_ids(clean_redis)) == ids
    assert not clean_redis.sismember("distillery:leases:workers", "dead")
