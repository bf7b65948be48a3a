"""The one chat-completions client: aiohttp inside an event loop, used by every caller that
answers, routes or judges (through `workers.caller`).

Why not the `openai` SDK here: measured on this project's 2-core machine against the
simulator, a call through `openai.OpenAI` in threads costs ~4.0 ms of CPU, through
`openai.AsyncOpenAI` 2.5 to 7 ms (it varies from run to run), and a plain aiohttp POST
with `json.loads` 0.5 to 1.0 ms (docs/performance.md). A worker answering hundreds of
prompts a second spent most of its CPU in the client, so the hot path speaks the (small,
stable) wire format itself. The SDK stays where only it makes sense: the provider's Files
and fine-tuning APIs (`producer.finetune`).
"""

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from models import AttemptStatus
from workers.chat import (
    CallError,
    ChatRequest,
    Completion,
    completion_from_json,
    elapsed_ms,
    malformed,
    status_error,
    timed_out,
)
from workers.held_stream import HeldStream
from workers.settings import TierConfig

REDACTED = "[redacted]"
# Shorter "keys" are placeholders like "x" for local servers; replacing them would garble text.
MIN_SECRET_LENGTH = 8


class ChatClient:
    """One aiohttp session (one connection pool) per endpoint, within one event loop.
    The number of calls in flight is bounded by the caller, not by the pool."""

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, float], aiohttp.ClientSession] = {}

    def session(self, base_url: str, timeout_s: float) -> aiohttp.ClientSession:
        key = (base_url, timeout_s)
        if key not in self.sessions:
            self.sessions[key] = aiohttp.ClientSession(
                base_url=base_url + "/",
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                json_serialize=json.dumps,
            )
        return self.sessions[key]

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sessions.values()))
        self.sessions.clear()

    async def call(self, tier: TierConfig, request: ChatRequest) -> Completion:
        api_key = tier.api_key()
        session = self.session(str(tier.base_url).rstrip("/"), tier.timeout_s)
        started = time.perf_counter()
        try:
            return await _post(session, api_key, request.body(tier.model), started)
        except CallError as error:
            raise without_secret(error, api_key) from None

    async def stream(
        self, tier: TierConfig, request: ChatRequest, *, hold: int, prompt_estimate: int
    ) -> Completion:
        """The answer streamed (`stream: true`, usage asked for), its first `hold` tokens
        read: a `Completion` of what has come, its `stream` still open unless the whole
        answer came (`workers.held_stream`)."""
        api_key = tier.api_key()
        session = self.session(str(tier.base_url).rstrip("/"), tier.timeout_s)
        body = {
            **request.body(tier.model),
            "stream": True,
            "stream_options": {"include_usage": True},  # the usage, for the ledger and limits
        }
        started = time.perf_counter()
        try:
            response = await _open(session, api_key, body, started)
        except CallError as error:
            raise without_secret(error, api_key) from None
        held = HeldStream(
            response,
            started=started,
            prompt_estimate=prompt_estimate,
            redact=lambda error: without_secret(error, api_key),
        )
        await held.hold(hold)
        return held.completion()


async def _post(
    session: aiohttp.ClientSession, api_key: str, body: dict[str, object], started: float
) -> Completion:
    headers = {"Authorization": f"Bearer {api_key}"}
    with _transport_errors(started):
        async with session.post("chat/completions", json=body, headers=headers) as response:
            data = await response.read()
            if response.status >= 400:
                message = _error_message(data)
                raise status_error(response.status, message, response.headers, elapsed_ms(started))
    latency = elapsed_ms(started)
    try:
        decoded = json.loads(data)
    except ValueError as exc:
        raise malformed(f"not JSON ({exc})", latency) from None
    return completion_from_json(decoded, latency)


async def _open(
    session: aiohttp.ClientSession, api_key: str, body: dict[str, object], started: float
) -> aiohttp.ClientResponse:
    """The streamed answer's response, its headers read (an error status: `CallError`)."""
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "text/event-stream"}
    with _transport_errors(started):
        response = await session.post("chat/completions", json=body, headers=headers)
        if response.status >= 400:
            async with response:
                message = _error_message(await response.read())
            raise status_error(response.status, message, response.headers, elapsed_ms(started))
    return response


@contextmanager
def _transport_errors(started: float) -> Iterator[None]:
    """A timeout or a failed connection as the `CallError` it is."""
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise timed_out(elapsed_ms(started)) from None
    except aiohttp.ClientError as exc:
        if isinstance(exc, aiohttp.ClientConnectionError):
            text = f"connection failed: {exc or type(exc).__name__}"
        else:
            text = f"{type(exc).__name__}: {exc}"
        raise CallError(text, status=AttemptStatus.ERROR, latency_ms=elapsed_ms(started)) from None


def _error_message(data: bytes) -> str:
    """The provider's own message (OpenAI's `{"error": {"message": ...}}`), else the body."""
    text = data.decode("utf-8", "replace")
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text.strip()
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return text.strip()


def without_secret(error: CallError, secret: str) -> CallError:
    """The error with `secret` cut out of its message. Some servers echo the key they were
    sent in their error text (OpenAI masks most of it, proxies and local servers may not),
    and that text goes into the database, the logs and `distillery results`."""
    message = str(error)
    if len(secret) >= MIN_SECRET_LENGTH and secret in message:
        error.args = (message.replace(secret, REDACTED),)
    return error
