"""Prometheus metrics for dashboards, computed from the SQL ledger at scrape time.

Why from SQL and not from counters inside each worker: every worker writes each call to the
`attempts` table, so one scrape of one process sees the whole fleet, however many worker
containers run, and the numbers survive restarts and scaling (in-process counters would
need a scrape target per container and reset each time one restarts). Aggregation happens
in the database (GROUP BY, SUM(CASE ...), `models.metrics_queries`); no row is loaded into
Python.

Queue lengths come from the broker (LLEN on each tier's Redis list), since a queued
message is not in the ledger until a worker takes it.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from models.metrics_queries import (
    AttemptGroup,
    attempt_groups,
    fallback_groups,
    job_groups,
    prompt_groups,
)

log = logging.getLogger(__name__)

# Upper bounds of the call-latency buckets, in milliseconds as the ledger stores them. From a
# fast local model (tens of ms) to a long frontier answer or a timeout (minutes).
LATENCY_BUCKETS_MS = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000)

# kombu's Redis transport keeps a queue's messages in a list named after the queue, plus one
# list per non-zero priority step named "<queue>\x06\x16<step>" (kombu.transport.redis).
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
KOMBU_UNACKED_KEY = "unacked"


@dataclass
class TierCalls:
    """Per-tier sums over the attempts table."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    latency_sum_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))


def _label(value: Any) -> str:
    """Enum columns come back as StrEnum members; their str() is the stored value."""
    return "" if value is None else str(value)


def _per_tier(groups: Iterable[AttemptGroup], tiers: Sequence[str]) -> dict[str, TierCalls]:
    """Fold the (tier, status, purpose) groups into tiers; configured tiers with no calls
    yet appear with zeros, so a dashboard shows them from the start."""
    totals: dict[str, TierCalls] = defaultdict(TierCalls)
    for name in tiers:
        totals[name] = TierCalls()
    for row in groups:
        tier = totals[_label(row.tier)]
        tier.calls += row.calls
        tier.prompt_tokens += row.prompt_tokens
        tier.completion_tokens += row.completion_tokens
        tier.cost_usd += row.cost_usd
        tier.latency_sum_s += row.latency_ms / 1000
        for i, count in enumerate(row.buckets):
            tier.buckets[i] += count
    return totals


def calls_metric(groups: Iterable[AttemptGroup]) -> Metric:
    metric = CounterMetricFamily(
        "distillery_calls",
        "Model calls recorded in the ledger (retries included), by tier, status and purpose.",
        labels=["tier", "status", "purpose"],
    )
    for row in groups:
        metric.add_metric([_label(row.tier), _label(row.status), _label(row.purpose)], row.calls)
    return metric


def tokens_metric(tiers: dict[str, TierCalls]) -> Metric:
    metric = CounterMetricFamily(
        "distillery_tokens",
        "Tokens the providers reported, by tier and kind (prompt or completion).",
        labels=["tier", "kind"],
    )
    for name, tier in tiers.items():
        metric.add_metric([name, "prompt"], tier.prompt_tokens)
        metric.add_metric([name, "completion"], tier.completion_tokens)
    return metric


def cost_metric(tiers: dict[str, TierCalls]) -> Metric:
    metric = CounterMetricFamily(
        "distillery_cost_usd",
        "Cost of the calls in USD, priced by each tier's configured prices.",
        labels=["tier"],
    )
    for name, tier in tiers.items():
        metric.add_metric([name], tier.cost_usd)
    return metric


def latency_metric(tiers: dict[str, TierCalls]) -> Metric:
    metric = HistogramMetricFamily(
        "distillery_call_latency_seconds",
        "Latency of each model call (every status: errors and timeouts too), by tier.",
        labels=["tier"],
    )
    for name, tier in tiers.items():
        buckets = [
            (_seconds(bound), count)
            for bound, count in zip(LATENCY_BUCKETS_MS, tier.buckets, strict=True)
        ]
        buckets.append(("+Inf", tier.calls))
        metric.add_metric([name], buckets, sum_value=tier.latency_sum_s)
    return metric


def _seconds(bound_ms: int) -> str:
    return repr(bound_ms / 1000)  # 0.05, 1.0, 120.0: the `le` label Prometheus expects


def fallbacks_metric(conn: Connection) -> Metric:
    metric = CounterMetricFamily(
        "distillery_fallbacks",
        "Escalations from one tier to the next, by reason.",
        labels=["from_tier", "to_tier", "reason"],
    )
    for row in fallback_groups(conn=conn):
        metric.add_metric([row.from_tier, row.to_tier, _label(row.reason)], row.count)
    return metric


def prompts_metric(conn: Connection) -> Metric:
    metric = GaugeMetricFamily(
        "distillery_prompts",
        "Prompts by their status and their job's status and mode "
        '(status="pending" in a running job is the backlog).',
        labels=["job_status", "mode", "status"],
    )
    for row in prompt_groups(conn=conn):
        metric.add_metric([_label(row.job_status), _label(row.mode), _label(row.status)], row.count)
    return metric


def jobs_metric(conn: Connection) -> Metric:
    metric = GaugeMetricFamily(
        "distillery_jobs", "Jobs by mode and status.", labels=["mode", "status"]
    )
    for row in job_groups(conn=conn):
        metric.add_metric([_label(row.mode), _label(row.status)], row.count)
    return metric


def ledger_metrics(engine: Engine, tiers: Sequence[str] = ()) -> list[Metric]:
    """Every metric computed from SQL, over one connection."""
    with engine.connect() as conn:
        groups = attempt_groups(conn=conn, bounds_ms=LATENCY_BUCKETS_MS)
        per_tier = _per_tier(groups, tiers)
        return [
            calls_metric(groups),
            tokens_metric(per_tier),
            cost_metric(per_tier),
            latency_metric(per_tier),
            fallbacks_metric(conn),
            prompts_metric(conn),
            jobs_metric(conn),
        ]


def queue_key(queue: str, priority: int) -> str:
    return f"{queue}{KOMBU_PRIORITY_SEPARATOR}{priority}" if priority else queue


def queue_lengths(redis_client: Any, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each queue (all priorities), in one round trip."""
    pipeline = redis_client.pipeline(transaction=False)
    for queue in queues:
        for priority in KOMBU_PRIORITY_STEPS:
            pipeline.llen(queue_key(queue, priority))
    lengths = iter(pipeline.execute())
    return {queue: sum(next(lengths) for _ in KOMBU_PRIORITY_STEPS) for queue in queues}


def broker_metrics(redis_client: Any, queues: Sequence[str]) -> list[Metric]:
    waiting = GaugeMetricFamily(
        "distillery_queue_length",
        "Messages waiting in each Celery queue (not yet taken by a worker).",
        labels=["queue"],
    )
    for queue, length in queue_lengths(redis_client, queues).items():
        waiting.add_metric([queue], length)
    unacked = GaugeMetricFamily(
        "distillery_broker_unacked_messages",
        "Messages taken by workers and not yet acknowledged (running or reserved), all queues.",
        value=redis_client.hlen(KOMBU_UNACKED_KEY),
    )
    return [waiting, unacked]


class LedgerCollector:
    """A prometheus_client collector: the ledger's metrics, and the broker's when a Redis
    client is given. A source that fails to answer is reported as `*_up 0` and its metrics
    are left out, so the scrape itself still succeeds and an alert can fire on it."""

    def __init__(
        self,
        engine: Engine,
        *,
        redis_client: Any = None,
        tiers: Sequence[str] = (),
        queues: Sequence[str] = (),
    ) -> None:
        self.engine = engine
        self.redis_client = redis_client
        self.tiers = list(tiers)
        self.queues = list(queues) or list(tiers)

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        yield from self._source("ledger", lambda: ledger_metrics(self.engine, self.tiers))
        if self.redis_client is not None:
            yield from self._source(
                "broker", lambda: broker_metrics(self.redis_client, self.queues)
            )
        yield GaugeMetricFamily(
            "distillery_scrape_duration_seconds",
            "Time this scrape spent querying the ledger and the broker.",
            value=time.perf_counter() - started,
        )

    def _source(self, name: str, read: Callable[[], list[Metric]]) -> Iterator[Metric]:
        from redis.exceptions import RedisError

        try:
            metrics, up = read(), 1
        except (SQLAlchemyError, RedisError, OSError) as exc:
            # the driver's own message, not SQLAlchemy's, which repeats the whole query
            log.warning("metrics: the %s did not answer: %s", name, getattr(exc, "orig", exc))
            metrics, up = [], 0
        yield GaugeMetricFamily(
            f"distillery_{name}_up", f"1 if the {name} answered this scrape, 0 if not.", value=up
        )
        yield from metrics


def make_registry(
    engine: Engine,
    *,
    redis_client: Any = None,
    tiers: Sequence[str] = (),
    queues: Sequence[str] = (),
) -> CollectorRegistry:
    """A registry holding only Distillery's metrics (no process or GC metrics of the exporter)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = LedgerCollector(engine, redis_client=redis_client, tiers=tiers, queues=queues)
    registry.register(collector)
    return registry
