"""Serving a trained student: llama-cpp-python's OpenAI-compatible server on the student's
GGUF, with per-token logprobs (what the router's confidence is computed from).

The command line is the one the tests use on the untrained base too (tests/helpers/
realmodel.py), so a student is served exactly as the base was measured."""

import importlib.util
import os
import sys
from pathlib import Path

from models import FineTune, FineTuneStatus
from workers.errors import BadConfig, BadInput

# Modules `python -m llama_cpp.server` needs: llama-cpp-python plus its [server] extra.
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")


def server_available() -> bool:
    """llama-cpp-python and its [server] extra are importable (checked without importing)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in SERVER_MODULES)
    except (ImportError, ValueError):
        return False


def server_command(
    model: Path,
    port: int,
    *,
    alias: str,
    n_ctx: int = 2048,
    host: str = "127.0.0.1",
    threads: int | None = None,
    lora: Path | None = None,
) -> list[str]:
    """MODEL served as ALIAS; with LORA, a llama.cpp LoRA adapter GGUF applied on top."""
    threads = threads or max(1, min(os.cpu_count() or 1, 8))
    adapter = ["--lora_path", str(lora)] if lora else []
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        alias,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        # The gguf carries the base's own chat template (tokenizer.chat_template, copied into
        # the student by the export), which the server uses when no chat format is named.
        # Logits for every position are what per-token logprobs are computed from.
        "--logits_all",
        "true",
        # Serve concurrent requests one after the other instead of cancelling a running
        # stream when the next request arrives.
        "--interrupt_requests",
        "false",
        "--seed",
        "0",
        *adapter,
    ]


def server_environment() -> dict[str, str]:
    """Only harmless variables for the server: llama_cpp.server reads every one of its settings
    from the environment too (pydantic-settings, any case: API_KEY would demand a key,
    CHAT_FORMAT change the template), and uvicorn takes HOST and PORT over the command line."""
    keep = {"PATH", "HOME", "LANG", "TMPDIR", "TMP", "TEMP", "SYSTEMROOT", "LD_LIBRARY_PATH"}
    prefixes = ("LC_", "OMP_", "GGML_")
    return {k: v for k, v in os.environ.items() if k in keep or k.startswith(prefixes)}


def student_gguf(row: FineTune, kind: str = "gguf") -> Path:
    """The run's student GGUF (KIND "gguf", merged) or its LoRA adapter GGUF ("adapter_gguf");
    BadInput when the run has none (yet)."""
    if row.status != FineTuneStatus.SUCCEEDED:
        raise BadInput(f"fine-tune {row.id} is {row.status.value}: no student to serve yet")
    path = Path(row.artifacts.get(kind, ""))
    if kind not in row.artifacts or not path.is_file():
        raise BadInput(
            f"fine-tune {row.id} has no {kind.replace('_', ' ')} (its base was not a GGUF, "
            f"or the file was moved): {row.artifacts.get(kind, 'none written')}"
        )
    return path


def require_server() -> None:
    if not server_available():
        raise BadConfig(
            "serving a student needs llama-cpp-python's server: pip install -e '.[llama]' "
            "(from a clone: make .venv/.installed-llama)"
        )
