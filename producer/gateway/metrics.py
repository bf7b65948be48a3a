"""The gateway's Prometheus metrics, at its own `GET /metrics`: requests by model and
status, answers by routed and final tier, escalations, the latency the gateway adds to a
request (its time minus the model calls' own), and the time to first byte.

Counters and histograms only, so they also work across `--processes N`: the parent then
sets PROMETHEUS_MULTIPROC_DIR (a directory of its own) before the children start, each
writes its samples there, and whichever process a scrape reaches sums them all."""

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from workers.live import LiveOutcome

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Added latency is meant to be a few milliseconds; time to first byte covers model calls.
ADDED_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter(
    "distillery_gateway_requests",
    "Chat requests answered by the gateway, by requested model and HTTP status",
    ["model", "status"],
)
ANSWERS = Counter(
    "distillery_gateway_answers",
    "Requests answered, by the tier the router chose and the tier that answered",
    ["routed_tier", "final_tier"],
)
ESCALATIONS = Counter(
    "distillery_gateway_escalations",
    "Escalations along the fallback chain, by the tier the router chose",
    ["routed_tier"],
)
ADDED = Histogram(
    "distillery_gateway_added_latency_seconds",
    "A request's time in the gateway minus its model calls' own time",
    buckets=ADDED_BUCKETS,
)
TTFB = Histogram(
    "distillery_gateway_time_to_first_byte_seconds",
    "From the request's arrival to the first byte of its answer (held-back streams included)",
    ["stream"],
    buckets=TTFB_BUCKETS,
)


def observe_request(model: str, status: int) -> None:
    REQUESTS.labels(model=model or "-", status=str(status)).inc()


def observe_outcome(
    outcome: LiveOutcome, *, total_s: float, first_byte_s: float, stream: bool
) -> None:
    ANSWERS.labels(routed_tier=outcome.routed_tier, final_tier=outcome.final_tier).inc()
    if outcome.escalations:
        ESCALATIONS.labels(routed_tier=outcome.routed_tier).inc(outcome.escalations)
    ADDED.observe(max(0.0, total_s - outcome.upstream_ms / 1000))
    TTFB.labels(stream=str(stream).lower()).observe(first_byte_s)


def exposition() -> bytes:
    """The text format, summed over every process when there are several."""
    if os.environ.get(MULTIPROC_ENV):
        registry: Any = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)
