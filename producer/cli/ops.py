"""The operations commands of `distillery`: run a worker, the model simulator, the demo,
and the Prometheus metrics endpoint (producer/metrics.py)."""

from pathlib import Path
from typing import Any

import click

from producer.cli.common import console, engine, handle_errors, out, settings
from producer.errors import UserError
from workers.errors import ExitCode

# Commands import the modules they work with when they run, so that `--help` loads none of
# them (producer/cli/common.py says which are heavy).

DEFAULT_METRICS_PORT = 9464

listen_host = click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on (0.0.0.0 in a container)",
)


@click.command()
@click.option(
    "--tiers",
    default=None,
    help="comma-separated tier queues to consume, e.g. small,frontier [default: every tier]",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="messages handled at once (each a batch of prompts); calls in flight are capped "
    "per tier by its `concurrency` in the config",
)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--no-control", is_flag=True, help="do not consume the control queue (reducer jobs)")
@handle_errors
def worker(tiers: str | None, concurrency: int, loglevel: str, no_control: bool) -> None:
    """Run a worker process for the given tiers, or every configured tier (needs REDIS_URL)."""
    from producer.worker import run_worker

    run_worker(
        settings(),
        tiers=tiers,
        concurrency=concurrency,
        loglevel=loglevel,
        control=not no_control,
        engine=engine(),
    )


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8900, show_default=True)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, path_type=Path),
    help="per-model behaviour (TOML or JSON)",
)
@handle_errors
def sim(host: str, port: int, config_file: Path | None) -> None:
    """Run the OpenAI-compatible model simulator."""
    from simulator import SimConfig, run

    try:
        config = SimConfig.from_file(config_file) if config_file else SimConfig.tiered()
    except (ValueError, OSError) as exc:  # tomllib's and json's errors are ValueErrors
        raise UserError(f"simulator config {config_file}: {exc}", ExitCode.BAD_CONFIG) from exc
    console.print(f"simulator on http://{host}:{port}/v1 (Ctrl-C to stop)")
    run(config, host=host, port=port)


@click.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path),
    default=Path("distillery-demo"),
    show_default=True,
    help="where the demo's database, config and files go",
)
@handle_errors
def demo(workdir: Path) -> None:
    """Run a whole teacher job against the local simulator, no services needed."""
    from producer.demo import run_demo

    run_demo(workdir, console=console, out=out)


@click.command("metrics")
@listen_host
@click.option(
    "--port", type=click.IntRange(1, 65535), default=DEFAULT_METRICS_PORT, show_default=True
)
@handle_errors
def metrics(host: str, port: int) -> None:
    """Serve Prometheus metrics at /metrics: calls, tokens, cost, latency and fallbacks
    per tier from the database, and queue lengths from Redis, computed at each scrape."""
    serve_metrics(host, port)


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

    conf = settings()
    tiers = list(conf.tiers)
    return {
        # No create_tables: the schema belongs to `distillery db upgrade`. Until it exists
        # the endpoint still answers, with distillery_ledger_up 0.
        "engine": get_engine(conf.database_url),
        "redis_client": redis.Redis.from_url(conf.redis_url) if conf.redis_url else None,
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


@click.command()
@listen_host
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--processes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="server processes sharing the port (each with its own event loop)",
)
@handle_errors
def serve(host: str, port: int, processes: int) -> None:
    """Run the OpenAI-compatible gateway: POST /v1/chat/completions routes each request
    (model `route`, `route:<router>` or a tier name) and records it in a live job."""
    from producer.gateway.serve import serve as run

    conf = settings()
    engine()  # SQLite's tables are created here; PostgreSQL's by `distillery db upgrade`
    console.print(f"gateway on http://{host}:{port}/v1 ({processes} process(es); Ctrl-C to stop)")
    run(conf, host, port, processes)


COMMANDS = [worker, sim, demo, metrics, serve]
