"""What every benchmark shares: the environment, the simulator and `distillery worker` as
separate processes, throwaway databases, prompt files, and how figures are printed.

Importing this module points the process at Redis database 8 and at a bench-only config
*before* anything of ours is imported: the Celery app is built once, at import of
`workers.app`, from whatever the environment says then. So every benchmark imports
`bench.common` first (isort keeps `bench` ahead of `models`, `producer` and `workers`).
"""

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The shared machine gives this work Redis database 8; the tests use 13.
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RESULTS_ENV = "BENCH_RESULTS"  # a JSON Lines file that run_all collects figures in
TIER = "frontier"  # the tier the benchmarks use; it is also the default teacher tier
MODEL = "sim-frontier"
# A second tier, for the benchmarks that run two (bench.rate_limit): the simulator limits
# each model name on its own, as a provider limits each model.
TIER_MODELS = {TIER: MODEL, "medium": "sim-medium"}
SIM_START_TIMEOUT_S = 30.0
WORKER_READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0

_SCRATCH = Path(tempfile.mkdtemp(prefix="distillery-bench-"))
KEEP_ENV = "BENCH_KEEP"  # set it to keep databases and worker logs for a post-mortem


def _remove_scratch() -> None:
    if os.environ.get(KEEP_ENV):
        print(f"kept {_SCRATCH}", flush=True)
    else:
        shutil.rmtree(_SCRATCH, ignore_errors=True)


atexit.register(_remove_scratch)


def _point_at_bench_services() -> None:
    """The producer side only needs the queue names and the broker: a config with the one
    tier on an unused port is enough (workers get their own config with the real server)."""
    producer_config = _SCRATCH / "producer.toml"
    producer_config.write_text(
        "".join(
            f'[tiers.{tier}]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "{model}"\n'
            for tier, model in TIER_MODELS.items()
        ),
        encoding="utf-8",
    )
    os.environ["REDIS_URL"] = BENCH_REDIS_URL
    os.environ["DISTILLERY_CONFIG"] = str(producer_config)
    os.environ.pop("DATABASE_URL", None)  # each run names its own database


_point_at_bench_services()


# --------------------------------------------------------------------------- the machine


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def memory_summary() -> str:
    """`free -h`'s Mem: line, as total / available."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line
    )

    def gib(name: str) -> str:
        return f"{int(fields[name].split()[0]) / 1024**2:.1f} GiB"

    return f"{gib('MemTotal')} total, {gib('MemAvailable')} available"


def code_version() -> str:
    """The commit measured, and how many files differ from it (the tree is shared)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    ours = ("bench/", "docs/performance.md")
    changed = [line for line in git("status", "--porcelain").splitlines() if line[3:] not in ours]
    changed = [line for line in changed if not line[3:].startswith(ours)]
    dirty = f" + {len(changed)} uncommitted changes" if changed else ""
    return f"{git('rev-parse', '--short', 'HEAD')}{dirty}"


def machine_summary() -> str:
    return (
        f"nproc {os.cpu_count()}, memory {memory_summary()}, load {load_average()}, "
        f"code {code_version()}"
    )


# ------------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One measured number, with its baseline from the same run and how they compare."""

    bench: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    ratio_name: str = ""  # how the ratio is taken, e.g. "pipeline/direct"
    target: str = ""
    met: bool | None = None  # None: no target for this figure
    note: str = ""
    load: str = field(default_factory=load_average)

    def line(self) -> str:
        parts = [f"[{self.bench}] {self.name}: {self.value:,.2f} {self.unit}"]
        if self.baseline is not None:
            parts.append(f"baseline {self.baseline_name}: {self.baseline:,.2f} {self.unit}")
        if self.ratio is not None:
            parts.append(f"ratio {self.ratio_name} = {self.ratio:.3f}")
        if self.target:
            verdict = "" if self.met is None else (" MET" if self.met else " MISSED")
            parts.append(f"target {self.target}{verdict}")
        if self.note:
            parts.append(self.note)
        parts.append(f"load {self.load}")
        return " | ".join(parts)


def report(figure: Figure) -> Figure:
    """Print the figure and, under run_all, keep it for the summary table."""
    print(figure.line(), flush=True)
    results = os.environ.get(RESULTS_ENV)
    if results:
        with open(results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(figure)) + "\n")
    return figure


def say(message: str) -> None:
    print(f"  {message}", flush=True)


# --------------------------------------------------------------------------------- files


def scratch_dir(name: str) -> Path:
    """A fresh directory under this process's temporary area."""
    path = _SCRATCH / f"{name}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def prompt_text(number: int) -> str:
    topics = ("photosynthesis", "compound interest", "TCP handshakes", "the French Revolution")
    return f"Explain idea {number} about {topics[number % len(topics)]} to a student, briefly."


def write_prompts(path: Path, count: int) -> Path:
    """A JSONL prompt file as users write it: a prompt and a custom_id per line."""
    with path.open("w", encoding="utf-8") as handle:
        for number in range(count):
            row = {"prompt": prompt_text(number), "custom_id": f"p{number}"}
            handle.write(json.dumps(row) + "\n")
    return path


def write_worker_config(
    path: Path,
    *,
    base_url: str,
    database_url: str,
    rpm: int | None = None,
    calls_in_flight: int | None = None,
    tiers: tuple[str, ...] = (TIER,),
    teacher: str = TIER,
    tier_extra: str = "",
) -> Path:
    """A worker's config: the tiers on the simulator (each with the same limits), the run's
    database, and the teacher tier that jobs submitted with it go to.
    `calls_in_flight` is each tier's `concurrency`: each worker process answers that many
    of the tier's prompts at once (its call loop); None keeps the project's default.
    `tier_extra`: more settings for every tier, as TOML lines."""
    tier_extra += f"rpm = {rpm}\n" if rpm else ""
    tier_extra += f"concurrency = {calls_in_flight}\n" if calls_in_flight else ""
    tier_tables = "".join(
        f'\n[tiers.{tier}]\nbase_url = "{base_url}"\nmodel = "{TIER_MODELS[tier]}"\n'
        f"input_per_1k = 5.0\noutput_per_1k = 5.0\n{tier_extra}"
        for tier in tiers
    )
    path.write_text(
        f'database_url = "{database_url}"\noutput_dir = "{path.parent / "output"}"\n'
        f'{tier_tables}\n[teacher]\ntier = "{teacher}"\n',
        encoding="utf-8",
    )
    return path


# ------------------------------------------------------------------------------ services


def flush_bench_redis() -> None:
    """Empty database 8 (queues, rate-limit state): ours alone on the shared server."""
    import redis

    redis.Redis.from_url(BENCH_REDIS_URL).flushdb()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class SimulatorProcess:
    """The simulator in its own process (`python -m simulator`), so it has its own core
    instead of competing with the code under test for this process's GIL."""

    def __init__(self, behaviour: dict[str, Any], workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "simulator.json"
        config.write_text(json.dumps({"default": behaviour}), encoding="utf-8")
        self.log = (workdir / "simulator.log").open("wb")
        command = [PYTHON, "-m", "simulator", "--port", str(self.port), "--config", str(config)]
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait_until_serving()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + SIM_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the simulator exited with {self.process.returncode}")
            with contextlib.suppress(OSError):
                self.stats()
                return
            time.sleep(0.1)
        raise RuntimeError("the simulator did not start serving in time")

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = http_json(f"{self.url}/admin/stats")
        return stats

    def events(self, model: str = MODEL) -> list[tuple[float, int, int]]:
        """(arrival time, HTTP status, tokens) of every answered request to `model`."""
        return [(float(t), int(s), int(n)) for t, s, n in self.stats()["events"].get(model, [])]

    def reset_stats(self) -> None:
        http_json(f"{self.url}/admin/reset", {})

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()

    def __enter__(self) -> "SimulatorProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(process: "subprocess.Popen[bytes]") -> None:
    """SIGTERM (a Celery worker's warm shutdown), then SIGKILL if it hangs; this process's
    own children only, by their pid."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class WorkerPool:
    """`distillery worker` processes exactly as a user starts them (threads pool, INFO log)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []

    def log_path(self, index: int) -> Path:
        return self.workdir / f"worker-{index}.log"

    def start(
        self,
        config: Path,
        *,
        count: int = 1,
        messages: int | None = None,
        tiers: str | None = TIER,
    ) -> None:
        """`count` workers; `messages` is `--concurrency` (messages handled at once), left
        at the CLI's default unless given. Calls in flight come from the config. `tiers`
        is `--tiers`; None consumes every tier of the config."""
        for _ in range(count):
            self._start_one(config, messages, tiers)
        for index in range(len(self.processes)):
            self._wait_ready(index)

    def _start_one(self, config: Path, messages: int | None, tiers: str | None) -> None:
        environ = {**os.environ, "DISTILLERY_CONFIG": str(config), "REDIS_URL": BENCH_REDIS_URL}
        command = [PYTHON, "-m", "producer.cli", "worker", "--loglevel", "INFO"]
        command += ["--tiers", tiers] if tiers else []
        command += ["--concurrency", str(messages)] if messages else []
        log = self.log_path(len(self.processes)).open("wb")
        self.processes.append(
            subprocess.Popen(command, cwd=REPO, env=environ, stdout=log, stderr=subprocess.STDOUT)
        )

    def _wait_ready(self, index: int) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if " ready." in self.log_path(index).read_text(errors="replace"):
                return
            if self.processes[index].poll() is not None:
                raise RuntimeError(f"worker {index} exited:\n{self.log_tail(index)}")
            time.sleep(0.2)
        raise RuntimeError(f"worker {index} was not ready in time:\n{self.log_tail(index)}")

    def log_tail(self, index: int, chars: int = 3000) -> str:
        return self.log_path(index).read_text(errors="replace")[-chars:]

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            stop_process(process)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------ memory


def proc_status_kib(pid: int, key: str) -> int:
    """A `/proc/PID/status` size in KiB: VmRSS now, or VmHWM, the peak RSS so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def mib(kib: float) -> float:
    return kib / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far. Unlike wall time, it barely moves
    with the machine's load, so it says what a step costs even on a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each process still alive."""
    used = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            used[pid] = cpu_seconds(pid)
    return used


# ----------------------------------------------------------------------------- databases


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'distillery.db'}"


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database, dropped afterwards; None when the server is unreachable
    (the PostgreSQL rows are then left out, the SQLite ones still run)."""
    import psycopg

    name = f"distillery_bench_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as exc:
        say(f"PostgreSQL unavailable, skipped: {exc}")
        yield None
        return
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_backend_pids(url: str) -> list[int]:
    """The server processes serving `url`'s database (none for SQLite): the server runs
    on this machine, so their CPU can be read from /proc like any process's."""
    if not url.startswith("postgresql"):
        return []
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))
        return [int(pid) for (pid,) in rows.fetchall()]


@contextlib.contextmanager
def database(kind: str, directory: Path) -> Iterator[str | None]:
    """A database URL of `kind` ("sqlite" or "postgres"), ready for a run."""
    if kind == "sqlite":
        yield sqlite_url(directory)
    else:
        with postgres_database() as url:
            yield url


def fresh_engine(url: str) -> Any:
    from models import create_tables, get_engine

    engine = get_engine(url)
    create_tables(engine)  # before any worker starts, so no two processes race to create
    return engine


def dispose_engine(url: str) -> None:
    """Close pooled connections, so a PostgreSQL database can be dropped afterwards."""
    from models import get_engine

    get_engine(url).dispose()


# --------------------------------------------------------------------------------- jobs


def wait_for_job(engine: Any, job_id: int, *, timeout_s: float, poll_s: float = 0.1) -> Any:
    """The job once it is no longer running (polling the ledger, as `status --watch` does)."""
    from sqlmodel import Session

    from models import Job, JobStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with Session(engine) as session:
            job = session.get(Job, job_id)
            if job is not None and job.status != JobStatus.RUNNING:
                return job
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f} s")


def utc_now() -> datetime:
    return datetime.now(UTC)


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result
