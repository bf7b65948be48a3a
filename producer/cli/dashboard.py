"""`distillery ui`: the web dashboard alone (the gateway serves the same one at /ui)."""

import click

from producer.cli.common import console, engine, handle_errors, settings
from producer.cli.ops import listen_host

DEFAULT_UI_PORT = 8050
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@click.command("ui")
@listen_host
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_UI_PORT, show_default=True)
@handle_errors
def ui(host: str, port: int) -> None:
    """Serve the dashboard: jobs, routing, costs, answers, training files and fine-tunes.
    With DISTILLERY_GATEWAY_KEYS set it asks for one of those keys (docs/ui.md)."""
    from aiohttp import web

    from producer.ui.app import build_standalone_app

    conf = settings()
    engine()  # SQLite's tables are created here; PostgreSQL's by `distillery db upgrade`
    keyed = bool(conf.gateway.api_keys())
    keys = "asks for a gateway key" if keyed else "no login: no gateway keys set"
    console.print(f"dashboard on http://{host}:{port}/ui ({keys}; Ctrl-C to stop)")
    if not keyed and host not in LOCAL_HOSTS:
        console.print(
            f"[yellow]warning: anyone who reaches {host}:{port} sees every prompt and answer; "
            f"set {conf.gateway.api_keys_env} to ask for a key[/]"
        )
    web.run_app(build_standalone_app(conf), host=host, port=port, print=None, access_log=None)


COMMANDS = [ui]
