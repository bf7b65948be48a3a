"""Operations commands of the `distillery` CLI: `distillery metrics` serves Prometheus
metrics for dashboards (producer/metrics.py).

producer.cli registers them with `main.add_command(metrics_command(handle_errors))`: it
passes its error handler in because it imports this module (importing it back would be a
cycle, and would run cli.py twice under `python -m producer.cli`)."""

from collections.abc import Callable
from typing import Any

import click

from producer.errors import ExitCode, UserError

ErrorHandler = Callable[[Callable[..., Any]], Callable[..., Any]]

DEFAULT_METRICS_PORT = 9464


def metrics_command(handle_errors: ErrorHandler) -> click.Command:
    @click.command("metrics")
    @click.option(
        "--host",
        default="127.0.0.1",
        show_default=True,
        help="address to listen on (0.0.0.0 in a container)",
    )
    @click.option(
        "--port", type=click.IntRange(1, 65535), default=DEFAULT_METRICS_PORT, show_default=True
    )
    @handle_errors
    def metrics(host: str, port: int) -> None:
        """Serve Prometheus metrics at /metrics: calls, tokens, cost, latency and fallbacks
        per tier from the database, and queue lengths from Redis, computed at each scrape."""
        serve_metrics(host, port)

    return metrics


def serve_metrics(host: str, port: int) -> None:
    """Serve until interrupted."""
    from producer.metrics import make_registry

    _, thread = listen(make_registry(**metrics_sources()), host, port)
    click.echo(f"metrics on http://{host}:{port}/metrics (Ctrl-C to stop)", err=True)
    thread.join()


def metrics_sources() -> dict[str, Any]:
    """The engine, broker client and tier/queue names of the configured deployment."""
    import redis

    from models import get_engine
    from workers.app import CONTROL_QUEUE
    from workers.settings import get_settings

    settings = get_settings()
    tiers = list(settings.tiers)
    return {
        # No create_tables: the schema belongs to `distillery db upgrade`. Until it exists
        # the endpoint still answers, with distillery_ledger_up 0.
        "engine": get_engine(settings.database_url),
        "redis_client": redis.Redis.from_url(settings.redis_url) if settings.redis_url else None,
        "tiers": tiers,
        "queues": [*tiers, CONTROL_QUEUE],
    }


def listen(registry: Any, host: str, port: int) -> Any:
    """prometheus_client's threaded HTTP server; returns (server, thread)."""
    from prometheus_client import start_http_server

    try:
        return start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc}", ExitCode.USAGE) from None
