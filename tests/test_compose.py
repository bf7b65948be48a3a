"""docker-compose.yml, the Dockerfile and the compose config, checked without a Docker engine:
the file parses, every service runs a real entry point of the project with options it
accepts, the worker services match the configured tiers, secrets are required, Flower has a
password, services wait for healthy dependencies, and every variable is documented.

`docker compose config` validates the file for real where Compose is installed; here it is
not (the `docker` client has no compose plugin), so that test skips."""

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from click.testing import CliRunner

from producer.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_TOML = ROOT / "deploy" / "distillery.compose.toml"
EXAMPLE_TOML = ROOT / "distillery.example.toml"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
LLAMA_DIR = ROOT / "deploy" / "llama"

SECRETS = {"POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+other}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
OUR_IMAGE = "distillery:latest"
REDIS_SERVICE_URL = "redis://redis:6379/0"


# --- reading the files ---------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def strings(node: Any) -> list[str]:
    """Every string in the parsed file, keys included (Compose interpolates values, not
    comments, so a comment may mention a ${NAME} freely)."""
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in strings(key) + strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def compose_variables() -> list[tuple[str, str, str]]:
    """(name, operator, argument) of every ${...} in the file; `$$` is a literal dollar."""
    return [
        (m[1], m[2] or "", m[3] or "")
        for text in strings(compose())
        for m in VARIABLE.finditer(text.replace("$$", ""))
    ]


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's substitution, for the forms compose_variables() recognises."""
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match[1], match[2] or "", match[3] or ""
        present = env.get(name)
        # With a colon, an empty value counts as unset; without, only a missing one does.
        usable = bool(present) if operator.startswith(":") else present is not None
        if operator in (":-", "-"):
            return present if usable and present is not None else argument
        if operator in (":?", "?") and not usable:
            raise AssertionError(f"${{{name}}} is required: {argument}")
        if operator == ":+":
            return argument if usable else ""
        return present or ""

    return VARIABLE.sub(substitute, value).replace("$$", "$")


def sample_env() -> dict[str, str]:
    """Only the required secrets set, as on a fresh machine: everything else takes its default."""
    return dict.fromkeys(SECRETS, "s3cret")


def dockerfile_instruction(name: str) -> list[str]:
    """The JSON (exec) form of the Dockerfile's last ENTRYPOINT or CMD."""
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    found = [line.split(None, 1)[1] for line in lines if line.startswith(f"{name} ")]
    assert found, f"the Dockerfile has no {name}"
    return list(json.loads(found[-1]))


def runs_our_image(service: dict[str, Any]) -> bool:
    return service.get("image") == OUR_IMAGE or service.get("build") in (".", "./")


def argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: entrypoint + command, as Docker combines them."""
    entrypoint = service.get("entrypoint", dockerfile_instruction("ENTRYPOINT"))
    # A service's own entrypoint drops the image's CMD, as Compose does.
    default_command = [] if "entrypoint" in service else dockerfile_instruction("CMD")
    command = service.get("command", default_command)
    words = [*entrypoint, *command]
    return [str(word) for word in interpolate(words, sample_env())]


def option_value(words: list[str], option: str) -> str:
    for i, word in enumerate(words):
        if word == option:
            return words[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{option} not in {shlex.join(words)}")


def configured_tiers(path: Path) -> set[str]:
    return set(tomllib.loads(path.read_text(encoding="utf-8"))["tiers"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


# --- the file and its services -------------------------------------------------------------


def test_the_file_parses_with_every_service() -> None:
    names = set(services())
    expected = {"redis", "postgres", "migrate", "simulator", "flower", "metrics", "gateway"}
    assert expected <= names
    assert {n for n in names if n.startswith("worker-")} == {
        "worker-small",
        "worker-medium",
        "worker-frontier",
    }
    assert set(compose()["volumes"]) >= {"pgdata", "training-files"}


def test_services_are_scalable() -> None:
    """`--scale worker-small=4` needs no fixed container name and no fixed host port."""
    for name, service in services().items():
        assert "container_name" not in service, name
        if name.startswith("worker-"):
            assert "ports" not in service, name


def distillery_command(words: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """Resolve `distillery a b --opt` to (["a", "b"], the click command, ["--opt"])."""
    command: click.Command = main
    context = click.Context(main, info_name="distillery")
    path: list[str] = []
    rest = list(words)
    while isinstance(command, click.Group) and not (rest and rest[0].startswith("-")):
        assert rest, f"`distillery {' '.join(path)}` needs a subcommand"
        name, rest = rest[0], rest[1:]
        found = command.get_command(context, name)
        assert found is not None, f"`distillery {' '.join([*path, name])}` is not a command"
        path.append(name)
        command = found
        context = click.Context(command, info_name=name, parent=context)
    return path, command, rest


@pytest.mark.parametrize("name", list(services()))
def test_each_service_runs_a_real_entry_point(name: str) -> None:
    service = services()[name]
    if not runs_our_image(service):
        pytest.skip(f"{name} runs a third-party image")
    words = argv(service)
    if words[0] == "distillery":
        check_distillery_command(words[1:])
    elif words[0] == "celery":
        check_celery_command(words[1:])
    else:
        pytest.fail(f"{name} runs {words[0]!r}, not an entry point of the project")


def check_distillery_command(words: list[str]) -> None:
    path, command, args = distillery_command(words)
    # The command exists under this name: a rename fails here, as it would in the container.
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    # And it accepts these options and values, without running it.
    if "--help" not in args:
        command.make_context(" ".join(path), list(args))


def check_celery_command(words: list[str]) -> None:
    from celery import Celery

    app_path = option_value(words, "--app")
    module, _, attribute = app_path.partition(":")
    assert isinstance(getattr(importlib.import_module(module), attribute), Celery)
    assert "flower" in words, "the only celery command the stack runs is Flower"
    check_flower_options(words[words.index("flower") + 1 :])
    result = subprocess.run(
        [sys.executable, "-m", "celery", "--app", app_path, "flower", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def flower_option_names() -> set[str]:
    import flower.options  # noqa: F401  (defines Flower's options on tornado's registry)
    from tornado.options import options

    return set(options._options)


def check_flower_options(tornado_args: list[str]) -> None:
    known = flower_option_names()
    for word in tornado_args:
        assert word.startswith("--"), word
        name = word[2:].split("=", 1)[0].replace("_", "-")
        assert name in known, f"flower has no option --{name}"


def test_worker_services_match_the_configured_tiers() -> None:
    by_service = {}
    for name, service in services().items():
        if name.startswith("worker-"):
            words = argv(service)
            assert words[:2] == ["distillery", "worker"], name
            by_service[name] = option_value(words, "--tiers")
            assert int(option_value(words, "--concurrency")) >= 1
    assert by_service == {f"worker-{tier}": tier for tier in by_service.values()}
    tiers = set(by_service.values())
    assert tiers == configured_tiers(COMPOSE_TOML) == configured_tiers(EXAMPLE_TOML)


def test_the_gateway_serves_behind_the_same_redis_and_database() -> None:
    gateway = services()["gateway"]
    words = argv(gateway)
    assert words[:2] == ["distillery", "serve"]
    assert option_value(words, "--host") == "0.0.0.0"
    port = option_value(words, "--port")
    assert gateway["ports"] == [f"127.0.0.1:${{GATEWAY_PORT:-{port}}}:{port}"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(gateway["healthcheck"]["test"])
    env = environment(gateway)
    assert env["REDIS_URL"] == REDIS_SERVICE_URL
    assert env["DATABASE_URL"] == environment(services()["worker-small"])["DATABASE_URL"]
    # The keys come from the environment, never a default written in the file.
    assert env["DISTILLERY_GATEWAY_KEYS"] == "${DISTILLERY_GATEWAY_KEYS:-}"
    assert "migrate" in gateway["depends_on"]
    # Its graceful stop (requests in flight, then the ledger) fits in the grace period.
    from producer.gateway.serve import SHUTDOWN_S

    grace = gateway["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > SHUTDOWN_S


def test_worker_concurrency_comes_from_the_environment() -> None:
    for tier in ("small", "medium", "frontier"):
        command = services()[f"worker-{tier}"]["command"]
        concurrency = command[command.index("--concurrency") + 1]
        assert re.fullmatch(rf"\$\{{{tier.upper()}_CONCURRENCY:-\d+\}}", concurrency), concurrency


def test_the_compose_tiers_call_the_simulator_service() -> None:
    simulator_port = option_value(argv(services()["simulator"]), "--port")
    for tier, conf in tomllib.loads(COMPOSE_TOML.read_text())["tiers"].items():
        url = urlsplit(conf["base_url"])
        assert url.hostname == "simulator", tier
        assert str(url.port) == simulator_port, tier


def test_app_services_read_the_mounted_config() -> None:
    for name, service in services().items():
        env = environment(service)
        if runs_our_image(service) and "DISTILLERY_CONFIG" in env:
            volumes = interpolate(service.get("volumes", []), sample_env())
            targets = {volume.split(":")[1] for volume in volumes}
            assert env["DISTILLERY_CONFIG"] in targets, name


# --- secrets, Flower, health ---------------------------------------------------------------


def test_secrets_are_required_not_defaulted() -> None:
    uses = [(name, op) for name, op, _ in compose_variables() if name in SECRETS]
    assert {name for name, _ in uses} == SECRETS
    assert all(op == ":?" for _, op in uses), uses
    for name in ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"):
        with pytest.raises(AssertionError, match="is required"):
            interpolate(compose(), dict.fromkeys(SECRETS - {name}, "x"))


def test_the_database_password_is_never_written_in_the_file() -> None:
    for name, service in services().items():
        url = environment(service).get("DATABASE_URL")
        if url is not None:
            assert "${POSTGRES_PASSWORD:?" in url, name


def test_flower_requires_a_password() -> None:
    flower = services()["flower"]
    env = environment(flower)
    words = argv(flower)
    password_on_command_line = any(w.startswith("--basic-auth=") for w in words)
    assert password_on_command_line or env.get("FLOWER_BASIC_AUTH", "").startswith(
        "${FLOWER_BASIC_AUTH:?"
    )
    for name, service in services().items():
        assert "FLOWER_UNAUTHENTICATED_API" not in environment(service), name
    # Flower turns each FLOWER_* variable into an option, and stops on an unknown one.
    known = flower_option_names()
    for variable in env:
        if variable.startswith("FLOWER_"):
            assert variable.removeprefix("FLOWER_").lower().replace("_", "-") in known, variable


def test_flower_watches_the_stack_broker() -> None:
    words = argv(services()["flower"])
    assert option_value(words, "--broker") == REDIS_SERVICE_URL
    assert environment(services()["worker-small"])["REDIS_URL"] == REDIS_SERVICE_URL


def test_services_wait_for_healthy_dependencies() -> None:
    all_services = services()
    for name, service in all_services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for dependency, rule in depends_on.items():
            condition = rule["condition"]
            if dependency == "migrate":
                assert condition == "service_completed_successfully", name
            else:
                assert condition == "service_healthy", (name, dependency)
                assert "healthcheck" in all_services[dependency], dependency


def test_every_ledger_user_waits_for_the_migration() -> None:
    for name, service in services().items():
        if "DATABASE_URL" in environment(service) and name != "migrate":
            assert "migrate" in (service.get("depends_on") or {}), name
    migrate = services()["migrate"]
    assert argv(migrate) == ["distillery", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_the_optional_llama_service() -> None:
    if not (LLAMA_DIR / "Dockerfile").exists():
        pytest.skip("deploy/llama has no Dockerfile yet: no llama service to check")
    llama = services()["llama"]
    assert llama["profiles"] == ["llama"]  # not started by a plain `docker compose up`
    assert Path(ROOT, llama["build"]).resolve() == LLAMA_DIR


# --- documentation -------------------------------------------------------------------------


def test_every_variable_is_documented() -> None:
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", doc))
    missing = {name for name, _, _ in compose_variables()} - documented
    assert not missing, f"docs/deployment.md does not document {sorted(missing)}"


def test_the_env_example_lists_exactly_the_compose_variables() -> None:
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert listed == {name for name, _, _ in compose_variables()}


# --- the image ------------------------------------------------------------------------------


def test_the_image_is_slim_and_runs_as_a_user() -> None:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    bases = [line for line in lines if line.startswith("ARG PYTHON_IMAGE=")]
    assert bases and bases[0].endswith("-slim")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert dockerfile_instruction("ENTRYPOINT") == ["distillery"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "distillery" in scripts


def test_the_build_context_keeps_secrets_out_and_the_package_in() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", ".venv", ".git", "distillery.toml"} <= ignored
    needed = {"pyproject.toml", "README.md", "models", "workers", "producer", "simulator"}
    assert not needed & ignored


# --- where Compose exists -------------------------------------------------------------------


def compose_installed() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


def test_docker_compose_config_validates() -> None:
    if not compose_installed():
        # Not need(): CI has no Compose either; the structural tests above stand in for it.
        pytest.skip("docker compose is not installed: `docker compose config` not run")
    result = subprocess.run(
        ["docker", "compose", "--file", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **sample_env()},
        check=False,
    )
    assert result.returncode == 0, result.stderr
