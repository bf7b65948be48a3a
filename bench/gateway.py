"""The live gateway against the simulator at 200 ms, and the same client calling the
simulator directly, in the same run: the latency the gateway adds (p50/p99, one request at
a time), requests/s at 50 and 200 concurrent clients, the gateway's CPU per request, and a
streaming run's time to first byte (the simulator streaming at 100 tokens/s) against the
direct stream's: the whole answer held, and `stream_holdback_tokens = 8` (a second gateway
process, two tiers and the rules router).

The client is one aiohttp session (cheap per request, so it is not what is measured), the
same for both sides; the direct side asks for the tier's model, the gateway side for the
tier by name (`model = "frontier"`: limits, ledger and trace, no router) and for `route`.
The gateway records every request in its ledger (SQLite here, or --database postgres).

    python -m bench.gateway [--seconds 15] [--requests 300] [--processes 1] [--quick]
                            [--py-spy DIR]   (then: python -m bench.pyspy_summary DIR)

Targets (issue 12): added p50 <= 3 ms, p99 <= 15 ms, throughput >= 0.8x direct.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_REDIS_URL,
    MODEL,
    PYTHON,
    REPO,
    TIER,
    Figure,
    SimulatorProcess,
    cpu_seconds,
    database,
    flush_bench_redis,
    free_port,
    fresh_engine,
    http_json,
    machine_summary,
    report,
    say,
    scratch_dir,
    stop_process,
    write_worker_config,
)
from bench.pipeline_vs_direct import PySpy

BENCH = "gateway"
LATENCY_MS = 200
CONCURRENCY = (50, 200)
MESSAGES = [{"role": "user", "content": "Explain compound interest to a student, briefly."}]
TARGET_P50_MS, TARGET_P99_MS, TARGET_THROUGHPUT = 3.0, 15.0, 0.8
# The streaming run: the tier's pace after its first token, the tokens held back, streams.
STREAM_TOKENS_PER_S = 100
HOLDBACK = 8
STREAM_REQUESTS = 40

Post = Callable[[], Awaitable[float]]


class GatewayProcess:
    def __init__(self, config: Path, workdir: Path, processes: int, name: str = "gateway") -> None:
        import os

        self.port = free_port()
        self.log = (workdir / f"{name}.log").open("wb")
        env = {**os.environ, "DISTILLERY_CONFIG": str(config), "REDIS_URL": BENCH_REDIS_URL}
        env.pop("DATABASE_URL", None)
        command = [PYTHON, "-m", "producer.cli", "serve", "--port", str(self.port)]
        command += ["--processes", str(processes)]
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait()

    def _wait(self) -> None:
        import urllib.request

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the gateway did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def pids(self) -> list[int]:
        """The process itself and its server processes, if any."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *map(int, children)]

    def cpu_seconds(self) -> float:
        """The server's CPU."""
        return sum(cpu_seconds(p) for p in self.pids())

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def poster(session: Any, url: str, model: str, stream: bool = False) -> Post:
    body = json.dumps({"model": model, "messages": MESSAGES, "stream": stream}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}

    async def post() -> float:
        """Milliseconds to the last byte (to the first byte when streaming)."""
        started = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as response:
            if stream:
                await response.content.readany()
                first = time.perf_counter()
                await response.read()
                assert response.status == 200, response.status
                return (first - started) * 1000
            await response.read()
            assert response.status == 200, response.status
        return (time.perf_counter() - started) * 1000

    return post


async def sequential(post: Post, count: int) -> list[float]:
    for _ in range(5):  # warm the connection and the server
        await post()
    return [await post() for _ in range(count)]


async def closed_loop(post: Post, clients: int, seconds: float) -> float:
    """Requests/s with `clients` each sending its next request when the last returns."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await post()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


async def measure(
    sim: SimulatorProcess, gateway: GatewayProcess, holdback: GatewayProcess, args: Any
) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        direct = await poster(session, sim.base_url + "/chat/completions", MODEL)
        by_tier = await poster(session, gateway.url, TIER)
        routed = await poster(session, gateway.url, "route")
        await added_latency(direct, by_tier, routed, args.requests)
        for clients in CONCURRENCY:
            await throughput(direct, by_tier, gateway, clients, args.seconds, args.py_spy)
        await streaming(session, sim, gateway, holdback, 10 if args.quick else STREAM_REQUESTS)


async def added_latency(direct: Post, by_tier: Post, routed: Post, count: int) -> None:
    samples = {"direct": [], "tier": [], "route": []}  # type: dict[str, list[float]]
    for _ in range(2):  # interleaved halves, so drift in the machine's load hits all alike
        for name, post in (("direct", direct), ("tier", by_tier), ("route", routed)):
            samples[name] += await sequential(post, count // 2)
    for q, target in ((0.5, TARGET_P50_MS), (0.99, TARGET_P99_MS)):
        base = percentile(samples["direct"], q)
        for name in ("tier", "route"):
            added = percentile(samples[name], q) - base
            report(
                Figure(
                    BENCH,
                    f"added latency p{round(q * 100)}, model={TIER if name == 'tier' else 'route'}",
                    added,
                    "ms",
                    baseline=base,
                    baseline_name=f"direct p{round(q * 100)}",
                    target=f"<= {target:g} ms",
                    met=added <= target,
                    note=f"gateway p{round(q * 100)} {percentile(samples[name], q):.2f} ms, "
                    f"{len(samples[name])} requests one at a time",
                )
            )


async def throughput(
    direct: Post,
    by_tier: Post,
    gateway: GatewayProcess,
    clients: int,
    seconds: float,
    py_spy: Path | None = None,
) -> None:
    base = await closed_loop(direct, clients, seconds)
    cpu_before = gateway.cpu_seconds()
    profiler = PySpy(py_spy, f"gateway-c{clients}", gateway.pids())
    started = time.perf_counter()
    rate = await closed_loop(by_tier, clients, seconds)
    requests = rate * (time.perf_counter() - started)
    profiler.stop()
    cpu_ms = (gateway.cpu_seconds() - cpu_before) / requests * 1000
    ratio = rate / base
    report(
        Figure(
            BENCH,
            f"throughput, {clients} clients",
            rate,
            "requests/s",
            baseline=base,
            baseline_name="direct",
            ratio=ratio,
            ratio_name="gateway/direct",
            target=f">= {TARGET_THROUGHPUT}",
            met=ratio >= TARGET_THROUGHPUT,
            note=f"gateway CPU {cpu_ms:.2f} ms per request",
        )
    )


async def streaming(
    session: Any,
    sim: SimulatorProcess,
    gateway: GatewayProcess,
    holdback: GatewayProcess,
    count: int,
) -> None:
    """Time to first byte of a streamed answer, the tier streaming at STREAM_TOKENS_PER_S:
    the direct stream's, and the gateway's holding back the whole answer (the default), the
    first HOLDBACK tokens (`model = route`: the routed tier can still escalate), and a
    tier by name under the same setting (nothing to escalate to: it holds one token)."""
    http_json(f"{sim.url}/admin/config", {"model": None, "tokens_per_s": STREAM_TOKENS_PER_S})
    direct = await poster(session, sim.base_url + "/chat/completions", MODEL, stream=True)
    runs = [
        ("whole answer held", await poster(session, gateway.url, TIER, stream=True)),
        (
            f"first {HOLDBACK} tokens held, model=route",
            await poster(session, holdback.url, "route", stream=True),
        ),
        (
            f"stream_holdback_tokens={HOLDBACK}, model={TIER} (1 token held)",
            await poster(session, holdback.url, TIER, stream=True),
        ),
    ]
    samples = {"direct": []}  # type: dict[str, list[float]]
    for _ in range(2):  # interleaved halves, as for the added latency
        samples["direct"] += await sequential(direct, count // 2)
        for name, post in runs:
            samples.setdefault(name, [])
            samples[name] += await sequential(post, count // 2)
    base = statistics.median(samples["direct"])
    for name, _ in runs:
        ttfb = statistics.median(samples[name])
        report(
            Figure(
                BENCH,
                f"stream time to first byte p50, {name}",
                ttfb,
                "ms",
                baseline=base,
                baseline_name="direct stream p50",
                ratio=ttfb / base,
                ratio_name="ttfb/direct",
                note=f"{len(samples[name])} streams one at a time; the tier at "
                f"{LATENCY_MS} ms to its first token, then {STREAM_TOKENS_PER_S} tokens/s",
            )
        )


def holdback_config(workdir: Path, sim: SimulatorProcess, url: str) -> Path:
    """Two tiers, the rules router, and `stream_holdback_tokens`: the routed tier has a
    tier to escalate to, so its first HOLDBACK tokens are held."""
    config = write_worker_config(
        workdir / "holdback.toml", base_url=sim.base_url, database_url=url, tiers=("medium", TIER)
    )
    with config.open("a", encoding="utf-8") as file:
        file.write(
            f'[router]\nstrategy = "rules"\nfallback = ["{TIER}"]\n'
            f"[gateway]\nstream_holdback_tokens = {HOLDBACK}\n"
        )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--quick", action="store_true", help="5 s phases, 60 requests")
    parser.add_argument(
        "--py-spy",
        type=Path,
        help="record the gateway with py-spy during the throughput runs into DIR (a profile "
        "run: py-spy's own CPU makes its figures worse)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.requests = 5.0, 60
    say(machine_summary())
    flush_bench_redis()
    workdir = scratch_dir(BENCH)
    with database(args.database, workdir) as url:
        if url is None:
            raise SystemExit("PostgreSQL is not reachable")
        fresh_engine(url)
        with SimulatorProcess({"latency_ms": LATENCY_MS}, workdir) as sim:
            config = write_worker_config(
                workdir / "distillery.toml", base_url=sim.base_url, database_url=url
            )
            gateway = GatewayProcess(config, workdir, args.processes)
            holdback = GatewayProcess(holdback_config(workdir, sim, url), workdir, 1, "holdback")
            try:
                asyncio.run(measure(sim, gateway, holdback, args))
            finally:
                gateway.stop()
                holdback.stop()


if __name__ == "__main__":
    main()
