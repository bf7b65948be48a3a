"""Secrets (issue 5, part 6): an API key lives only in the environment variable the config
names. It never reaches the database, task messages, Redis, logs, exception texts, the CLI's
output or the Celery conf Flower shows; a Redis password is accepted in REDIS_URL (redis://
and rediss://), works, and is never printed in full. See docs/security.md."""

import base64
import binascii
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, Table, func, inspect, select
from sqlmodel import Session

from models import AttemptStatus, Job, JobMode, JobStatus
from producer.errors import safe_url
from simulator import ModelBehaviour, RunningSimulator, SimConfig, start_in_thread
from tests.helpers.cli import invoke
from tests.helpers.clients import CLIENTS
from tests.helpers.config import write_config
from tests.helpers.pipeline import (
    attempts_of,
    submit_file,
    wait_for_job,
    wait_for_training_file,
    write_jsonl,
)
from tests.helpers.services import make_engine, need
from tests.helpers.workers import Workers, wait_until
from workers.errors import ExitCode

SECRET = "sk-distillery-test-SECRET-1234567890"
KEY_VAR = "DISTILLERY_TEST_API_KEY"
REDIS_PASSWORD = "distillery-redis-PASSWORD-0987654321"
PROMPT_MARKER = "zebra-quokka-marker"  # prompt text, which task messages must not carry either
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-test-password"

ROUTE_PROMPTS = [
    "[easy] What is the capital of France?",
    "[hard] What is the integral of x^x?",
    "[easy] Write a python function that reverses a list.",
    "[hard] Compare the trade-offs of microservices and monoliths for a bank.",
]


# ----------------------------------------------------------------- looking for a string


def expanded(text: str) -> str:
    """`text` plus everything encoded inside it: kombu keeps a message body in base64 inside
    a JSON envelope, so a plain search of Redis would not see a key in a message body."""
    found = [text]
    try:
        value = json.loads(text)
    except ValueError:
        return text
    for string in _strings(value):
        decoded = _base64_text(string)
        if decoded is not None:
            found.append(expanded(decoded))
    return "\n".join(found)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


_BASE64 = re.compile(r"^[A-Za-z0-9+/]{8,}={0,2}$")


def _base64_text(text: str) -> str | None:
    if len(text) % 4 or not _BASE64.match(text):
        return None
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None


def dump_redis(client: Any) -> dict[str, str]:
    """Every key of the database with its whole value: lists, hashes (kombu's `unacked`),
    sets, sorted sets, strings, each expanded as above."""
    dumped: dict[str, str] = {}
    for raw_key in client.scan_iter(count=500):
        key = raw_key.decode(errors="replace")
        values = _redis_values(client, raw_key)
        dumped[key] = "\n".join(expanded(v.decode(errors="replace")) for v in values)
    return dumped


def _redis_values(client: Any, key: bytes) -> list[bytes]:
    kind = client.type(key).decode()
    if kind == "list":
        return list(client.lrange(key, 0, -1))
    if kind == "hash":
        return [part for pair in client.hgetall(key).items() for part in pair]
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    if kind == "string":
        return [client.get(key) or b""]
    return []  # gone between SCAN and TYPE


def dump_database(url: str) -> dict[str, str]:
    """Every row of every table (whatever the models say), as text."""
    engine = make_engine(url)
    dumped = {}
    with engine.connect() as connection:
        for name in inspect(engine).get_table_names():
            table = Table(name, MetaData(), autoload_with=engine)
            rows = connection.execute(select(table)).all()
            dumped[name] = "\n".join(json.dumps(list(row), default=str) for row in rows)
    return dumped


def assert_secret_absent(where: str, text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{where} contains {secret!r}"


class RedisWatch:
    """Dumps the test Redis database over and over on a thread while jobs run, so messages
    waiting in the tier queues and those a worker holds (kombu's `unacked` hash) are all
    looked at, whenever they happen to be there."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.keys_seen: set[str] = set()
        self.texts: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        dumped = dump_redis(self.client)
        self.keys_seen.update(dumped)
        self.texts.update(dumped.values())

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()


class PubSubRecorder:
    """Every message published on the test database's fanout channels (task events that
    Flower reads, remote-control broadcasts and replies) while the test runs."""

    def __init__(self, client: Any) -> None:
        db = client.connection_pool.connection_kwargs.get("db", 0)
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(f"/{db}.*")
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is not None:
                self.messages.append(expanded(message["data"].decode(errors="replace")))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._pubsub.close()


# ---------------------------------------------------------------- the API key, end to end


@pytest.fixture
def slow_tiered_sim() -> Iterator[RunningSimulator]:
    """Calls slow enough that each message sits in `unacked` while the watch samples it."""
    config = SimConfig(
        default=ModelBehaviour(latency_ms=250),
        models={
            "sim-small": ModelBehaviour(latency_ms=250, skill=0.3),
            "sim-medium": ModelBehaviour(latency_ms=250, skill=0.6),
            "sim-frontier": ModelBehaviour(latency_ms=250, skill=0.95),
        },
    )
    with start_in_thread(config) as running:
        yield running


def test_api_key_never_leaves_the_environment(
    tmp_path: Path,
    database_url: str,
    workers: Workers,
    slow_tiered_sim: RunningSimulator,
    clean_redis: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(
        tmp_path / "distillery.toml",
        base_url=slow_tiered_sim.base_url,
        database_url=database_url,
        extra='[router]\nstrategy = "rules"\nfallback = ["frontier"]\n',
        api_key_env=KEY_VAR,
    )
    monkeypatch.setenv(KEY_VAR, SECRET)  # the producer checks the key is set
    events = PubSubRecorder(clean_redis)
    watch = RedisWatch(clean_redis)
    try:
        job_ids, engine = submit_both_jobs(tmp_path, config)
        watch.sample()  # every message is still waiting in its queue
        watch.start()
        slow_tiered_sim.fail_next(1, status=401)  # the error path, with the key in the request
        # OPENAI_LOG=debug: even the openai client's debug logging must not show the key.
        workers.start(
            config, tiers="small,medium,frontier", **{KEY_VAR: SECRET, "OPENAI_LOG": "debug"}
        )
        flower_text = flower_workers_text(tmp_path, config)
        run_to_the_end(engine, job_ids, workers)
    finally:
        watch.stop()
        events.stop()

    assert {"frontier", "control", "unacked"} <= watch.keys_seen, watch.keys_seen
    queued = "\n".join(watch.texts)
    assert "distillery.answer" in queued and "distillery.route" in queued  # headers
    assert '"chord": null' in queued  # only in a decoded message body
    assert_secret_absent("Redis", queued, SECRET, PROMPT_MARKER)
    assert events.messages, "no task events or broadcasts were seen"
    assert_secret_absent("Redis pub/sub", "\n".join(events.messages), SECRET, PROMPT_MARKER)
    assert_secret_absent("Flower /api/workers", flower_text, SECRET)

    check_error_path_was_taken(engine, job_ids)
    check_database(database_url)
    check_files(tmp_path, workers)
    check_cli_outputs(config, job_ids, monkeypatch)


def submit_both_jobs(tmp_path: Path, config: Path) -> tuple[dict[str, int], Any]:
    teacher_rows = [{"prompt": f"Explain {PROMPT_MARKER} topic {n}."} for n in range(6)]
    route_rows = [{"prompt": f"{text} {PROMPT_MARKER}"} for text in ROUTE_PROMPTS]
    teacher, engine, _ = submit_file(write_jsonl(tmp_path / "t.jsonl", teacher_rows), config)
    route, _, _ = submit_file(
        write_jsonl(tmp_path / "r.jsonl", route_rows), config, mode=JobMode.ROUTE, router="rules"
    )
    return {"teacher": teacher, "route": route}, engine


def run_to_the_end(engine: Any, job_ids: dict[str, int], workers: Workers) -> None:
    def finished() -> bool:
        with Session(engine) as session:
            jobs = [session.get(Job, job_id) for job_id in job_ids.values()]
        return all(job is not None and job.status != JobStatus.RUNNING for job in jobs)

    wait_until(finished, timeout=300, what="both jobs to finish", logs=workers.log_text)
    wait_for_training_file(engine, job_ids["teacher"], workers)


def flower_workers_text(tmp_path: Path, config: Path) -> str:
    """Flower's /api/workers (it includes each worker's Celery conf) once the worker shows."""
    from tests.helpers.flower import start_flower, stop

    auth = {"FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"}
    flower = start_flower(tmp_path, config, [], auth)
    seen: dict[str, Any] = {}
    try:

        def worker_conf_shown() -> bool:
            response = flower.get("/api/workers?refresh=1", auth=_flower_auth())
            seen.update(response.raise_for_status().json())
            return any(info.get("conf") for info in seen.values())

        wait_until(worker_conf_shown, timeout=60, what="Flower to show the worker's conf")
        return json.dumps(seen) + flower.log_text()
    finally:
        stop(flower)


def _flower_auth() -> Any:
    import httpx

    return httpx.BasicAuth(FLOWER_USER, FLOWER_PASSWORD)


def check_error_path_was_taken(engine: Any, job_ids: dict[str, int]) -> None:
    """The simulator's 401 (on whichever call came first) was recorded; its text is in the
    database, searched below."""
    attempts = [a for job_id in job_ids.values() for a in attempts_of(engine, job_id)]
    failed = [a for a in attempts if a.http_status == 401]
    assert len(failed) == 1 and failed[0].status == AttemptStatus.ERROR, attempts
    assert failed[0].error and "401" in failed[0].error


def check_database(url: str) -> None:
    tables = dump_database(url)
    for name in ("jobs", "prompts", "attempts", "fallbacks", "training_files"):
        assert tables.get(name), f"table {name} is empty: the search would prove nothing"
    for name, text in tables.items():
        assert_secret_absent(f"table {name}", text, SECRET)


def check_files(tmp_path: Path, workers: Workers) -> None:
    logs = workers.log_text()
    # The worker ran its tasks. (Answers go through `workers.http_client`, which logs no request
    # lines; OPENAI_LOG=debug still covers the SDK that the LLM router and tools use.)
    assert "ready" in logs and "distillery.answer" in logs
    assert_secret_absent("worker logs", logs, SECRET)
    for path in (tmp_path / "output").rglob("*"):  # the reducer's training files
        if path.is_file():
            assert_secret_absent(str(path), path.read_text(errors="replace"), SECRET)


def check_cli_outputs(
    config: Path, job_ids: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.settings import get_settings

    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    get_settings.cache_clear()
    try:
        commands = [["jobs"], ["jobs", "--json"]]
        for job in map(str, job_ids.values()):
            commands += [["status", job], ["status", job, "--json"], ["results", job]]
            commands += [
                ["results", job, "--format", "csv"],
                ["report", job],
                ["report", job, "--json"],
            ]
        for command in commands:
            result = invoke(*command)
            assert result.exit_code == 0, (command, result.output)
            assert_secret_absent(" ".join(command), result.output, SECRET)
    finally:
        get_settings.cache_clear()


# ------------------------------------------------------ a server that echoes the key back


class _EchoingKeyHandler(BaseHTTPRequestHandler):
    """Answers 401 with the bearer token in the message, as some proxies and local servers do."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        body = json.dumps(
            {
                "error": {
                    "message": f"Incorrect API key provided: {token}.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@CLIENTS
def test_a_server_echoing_the_key_does_not_put_it_in_the_error(
    monkeypatch: pytest.MonkeyPatch, call: Any
) -> None:
    from workers.chat import CallError, ChatRequest
    from workers.http_client import REDACTED
    from workers.settings import TierConfig

    monkeypatch.setenv(KEY_VAR, SECRET)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingKeyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tier = TierConfig(
            base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",  # type: ignore[arg-type]
            model="m",
            api_key_env=KEY_VAR,
        )
        with pytest.raises(CallError) as caught:
            call(tier, ChatRequest([{"role": "user", "content": "hi"}]))
    finally:
        server.shutdown()
        server.server_close()
    error = caught.value
    assert (error.http_status, error.retryable) == (401, False)
    assert f"Incorrect API key provided: {REDACTED}" in str(error)
    assert SECRET not in str(error) and SECRET not in repr(error.args)


# ------------------------------------------------------------------- Redis with a password


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivateRedis:
    url: str
    port: int
    client: Any


def _self_signed_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        need("openssl", "not installed; cannot make a certificate for the TLS test")
    files = {
        name: directory / name
        for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "ext.cnf")
    }
    files["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            files["ca.key"],
            "-out",
            files["ca.pem"],
            "-days",
            "1",
            "-subj",
            "/CN=distillery-test-ca",
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            files["server.key"],
            "-out",
            files["server.csr"],
            "-subj",
            "/CN=localhost",
        ],
        [
            "x509",
            "-req",
            "-in",
            files["server.csr"],
            "-CA",
            files["ca.pem"],
            "-CAkey",
            files["ca.key"],
            "-CAcreateserial",
            "-out",
            files["server.pem"],
            "-days",
            "1",
            "-extfile",
            files["ext.cnf"],
        ],
    ]
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], check=True, capture_output=True, timeout=60)
    return files


def _redis_command(directory: Path, port: int, tls: bool) -> tuple[list[str], str]:
    """The server's command line and the URL a client uses for it."""
    command = ["redis-server", "--bind", "127.0.0.1", "--requirepass", REDIS_PASSWORD]
    command += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    if not tls:
        return [*command, "--port", str(port)], f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    certs = _self_signed_certificates(directory)
    command += ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"]
    command += [
        "--tls-cert-file",
        str(certs["server.pem"]),
        "--tls-key-file",
        str(certs["server.key"]),
    ]
    command += ["--tls-ca-cert-file", str(certs["ca.pem"])]
    # Verify the server: without ssl_cert_reqs kombu would connect without checking (see docs).
    query = f"ssl_cert_reqs=required&ssl_ca_certs={certs['ca.pem']}"
    return command, f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}/0?{query}"


@pytest.fixture(params=["password", "tls"])
def private_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, with a password (and TLS), stopped at the end."""
    import redis

    if shutil.which("redis-server") is None:
        need("redis-server", "not installed")
    directory = tmp_path / "private-redis"
    directory.mkdir()
    port = _free_port()
    command, url = _redis_command(directory, port, tls=request.param == "tls")
    log = directory / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(url)
    try:
        wait_until(
            lambda: _answers(client, process, log), timeout=30, what="the private redis-server"
        )
        yield PrivateRedis(url, port, client)
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)


def _answers(client: Any, process: subprocess.Popen[bytes], log: Path) -> bool:
    import redis

    if process.poll() is not None:
        need("redis-server", f"it exited at start (no TLS support?):\n{log.read_text()[-2000:]}")
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def test_a_job_runs_through_redis_with_a_password(
    tmp_path: Path,
    private_redis: PrivateRedis,
    workers: Workers,
    clean_redis: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from producer.submit import submit_job
    from workers.app import make_app
    from workers.settings import load_settings

    with start_in_thread(SimConfig(default=ModelBehaviour(latency_ms=5))) as sim:
        config = write_config(
            tmp_path / "distillery.toml",
            base_url=sim.base_url,
            database_url=f"sqlite:///{tmp_path / 'secured.db'}",
            rpm=6000,  # so the rate limiter's keys go through the secured Redis too
        )
        monkeypatch.setenv("REDIS_URL", private_redis.url)
        settings = load_settings(config)
        assert settings.redis_url == private_redis.url
        app = make_app(settings)
        engine = make_engine(settings.database_url)
        rows = [{"prompt": f"Explain thing {n}."} for n in range(5)]
        submitted = submit_job(
            write_jsonl(tmp_path / "p.jsonl", rows),
            mode=JobMode.TEACHER,
            settings=settings,
            engine=engine,
            app=app,
        )
        workers.start(config, tiers="frontier", REDIS_URL=private_redis.url)
        replies = worker_conf(app, workers)
        job = wait_for_job(engine, submitted.job_id, workers)

    assert job.status == JobStatus.FINISHED and job.completed == 5
    assert clean_redis.dbsize() == 0  # nothing went to the unsecured test database
    limiter_keys = private_redis.client.keys("distillery:ratelimit*")
    assert limiter_keys, "the rate limiter did not use the secured Redis"
    logs = workers.log_text()
    scheme = private_redis.url.split("://", 1)[0]
    assert f"{scheme}://:**@127.0.0.1:{private_redis.port}/0" in logs  # the worker banner
    assert_secret_absent("worker logs", logs, REDIS_PASSWORD)
    assert_secret_absent("Celery conf (Flower's /api/workers)", json.dumps(replies), REDIS_PASSWORD)
    app.close()


def worker_conf(app: Any, workers: Workers) -> dict[str, Any]:
    """What Flower's /api/workers shows as each worker's conf: Celery's `conf` inspection."""
    replies: dict[str, Any] = {}

    def answered() -> bool:
        replies.update(app.control.inspect(timeout=2).conf(with_defaults=True) or {})
        return bool(replies)

    wait_until(
        answered, timeout=60, what="the worker to answer `inspect conf`", logs=workers.log_text
    )
    return replies


def test_wrong_redis_password_is_a_clear_error_that_shows_neither_password(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    wrong = private_redis.url.replace(REDIS_PASSWORD, "not-the-PASSWORD-5555")
    result = submit_in_a_process(tmp_path, redis_url=wrong)
    assert result.returncode == ExitCode.SERVICE_DOWN, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Redis is unreachable at " in output and ":***@127.0.0.1" in output
    assert_secret_absent("submit output", output, REDIS_PASSWORD, "not-the-PASSWORD-5555")
    assert "Traceback" not in output
    assert private_redis.client.dbsize() == 0


# ------------------------------------------------------ REDIS_URL forms, without a server


def submit_in_a_process(
    tmp_path: Path, *, redis_url: str, in_config_file: bool = False
) -> subprocess.CompletedProcess[str]:
    """`distillery submit` in its own process: its Celery app is built from this Redis URL
    (this process's app was built once, at import, from the test database's URL). The URL
    is given as REDIS_URL, or as `redis_url` in the config file."""
    source = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "What is 2 + 2?"}])
    env = {**os.environ, "REDIS_URL": redis_url}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'secrets.db'}"
    if in_config_file:
        config = tmp_path / "with-redis.toml"
        tiers = Path(env["DISTILLERY_CONFIG"]).read_text(encoding="utf-8")
        config.write_text(f"redis_url = {json.dumps(redis_url)}\n{tiers}", encoding="utf-8")
        env["DISTILLERY_CONFIG"] = str(config)
        del env["REDIS_URL"]
    command = [sys.executable, "-m", "producer.cli", "submit", str(source)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


PASSWORD_URLS = [
    "redis://:{pw}@127.0.0.1:{port}/0",
    "redis://default:{pw}@127.0.0.1:{port}/3",
    "rediss://:{pw}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ssl/ca.pem",
]


@pytest.mark.parametrize("template", PASSWORD_URLS, ids=["redis", "redis_user", "rediss"])
def test_password_urls_are_accepted_and_masked(
    template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.app import make_app
    from workers.settings import load_settings

    url = template.format(pw=REDIS_PASSWORD, port=6399)
    monkeypatch.setenv("REDIS_URL", url)
    settings = load_settings()
    assert settings.redis_url == url
    assert ":***@127.0.0.1:6399/" in safe_url(url) and REDIS_PASSWORD not in safe_url(url)
    app = make_app(settings)
    with app.connection_for_write() as connection:  # not connected: nothing listens there
        assert REDIS_PASSWORD not in connection.as_uri()
    assert REDIS_PASSWORD not in json.dumps(app.conf.table(with_defaults=True), default=str)


UNREACHABLE_CASES = [(template, False) for template in PASSWORD_URLS] + [(PASSWORD_URLS[0], True)]


@pytest.mark.parametrize(
    ("template", "in_config_file"),
    UNREACHABLE_CASES,
    ids=["redis", "redis_user", "rediss", "redis_in_config_file"],
)
def test_unreachable_redis_message_masks_the_password(
    template: str, in_config_file: bool, tmp_path: Path
) -> None:
    # Bound but not listening: connections are refused, and no other process can take the
    # port meanwhile (this machine is shared).
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        port = refusing.getsockname()[1]
        url = template.format(pw=REDIS_PASSWORD, port=port)
        result = submit_in_a_process(tmp_path, redis_url=url, in_config_file=in_config_file)
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.SERVICE_DOWN, output
    assert f":***@127.0.0.1:{port}/" in output
    assert_secret_absent("submit output", output, REDIS_PASSWORD)
    assert "Traceback" not in output
    with Session(make_engine(f"sqlite:///{tmp_path / 'secrets.db'}")) as session:
        assert session.execute(select(func.count()).select_from(Job)).scalar_one() == 0


def test_settings_hold_only_the_keys_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The settings object (and anything that prints it) never holds the key itself."""
    from workers.settings import load_settings

    monkeypatch.setenv(KEY_VAR, SECRET)
    config = write_config(
        tmp_path / "distillery.toml",
        base_url="http://127.0.0.1:9/v1",
        database_url="sqlite://",
        api_key_env=KEY_VAR,
    )
    settings = load_settings(config)
    assert SECRET not in repr(settings) and SECRET not in settings.model_dump_json()
    assert settings.tiers["small"].api_key() == SECRET  # read when a call is made


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?password=hunter2-secret",
        "unix:///run/redis.sock?db=0&password=hunter2-secret",
        "postgresql://app@db/distillery?sslmode=require&sslpassword=hunter2-secret",
        "redis://:hunter2-secret@127.0.0.1:6379/0",
    ],
)
def test_safe_url_masks_passwords_in_the_query_string_too(url: str) -> None:
    shown = safe_url(url)
    assert "hunter2-secret" not in shown and "***" in shown
    assert shown.split("?")[0].split("@")[-1] == url.split("?")[0].split("@")[-1]  # host kept


def test_the_settings_repr_shows_no_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.settings import load_settings

    monkeypatch.setenv("REDIS_URL", "redis://:hunter2-secret@127.0.0.1:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2-secret@db/distillery")
    settings = load_settings()
    assert settings.redis_url and "hunter2-secret" in settings.redis_url  # still usable
    assert "hunter2-secret" not in repr(settings) and "hunter2-secret" not in str(settings)
