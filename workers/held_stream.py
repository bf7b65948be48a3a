"""A tier's answer read as it streams (`stream: true` upstream, OpenAI's server-sent events):
the first tokens held back while the caller decides, then the rest handed on as it comes.

The gateway's hold-back cascade (`[gateway] stream_holdback_tokens`) reads a tier's first N
tokens (`hold`), computes their confidence with the same code as a whole answer's (the
held `completion()` is a `Completion` like any other), and then either relays the events it
held and those still to come (`relay`), or closes the stream (`aclose`: the upstream
generation is cut) and asks the next tier. The tier's shared limits are settled once, when
the stream ends however it ends (`on_end`, set by `workers.caller`).

A token is an entry of the chunk's logprobs when the tier sends them, else a chunk with
content. A stream that fails — an error event (`data: {"error": ...}`, what OpenAI sends),
a cut connection, a timeout, or an end without `data: [DONE]` — raises `CallError`."""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from models import AttemptStatus
from workers.chat import CallError, Completion, elapsed_ms, timed_out

OnEnd = Callable[[int], Awaitable[None]]  # the tokens the call used, when it ended
Redact = Callable[[CallError], CallError]


class HeldStream:
    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        started: float,
        prompt_estimate: int,
        redact: Redact,
    ) -> None:
        self.response = response
        self.started = started
        self.prompt_estimate = prompt_estimate  # until the usage chunk says
        self.redact = redact
        self.events: list[dict[str, Any]] = []  # every event read, in order
        self.released = 0  # how many of them were handed on by `relay`
        self.parts: list[str] = []
        self.logprobs: list[float] = []
        self.tokens = 0
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.ended = False  # `data: [DONE]` read, or closed
        self.on_end: OnEnd | None = None

    # --- reading ------------------------------------------------------------------------

    async def hold(self, tokens: int) -> None:
        """Read until `tokens` tokens (or the whole answer, if shorter) are held."""
        try:
            while not self.ended and self.tokens < tokens:
                await self._read_event()
        except BaseException:
            await self.aclose()  # a failure or a cancellation: the call is over
            raise

    async def relay(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The held events at once, then each event as it comes, to the end; the limits
        are settled then. Raises `CallError` if the stream fails on the way."""
        try:
            while True:
                if self.released < len(self.events):
                    batch = self.events[self.released :]
                    self.released = len(self.events)
                    yield batch
                if self.ended:
                    break
                await self._read_event()
        finally:
            await self.aclose()

    async def _read_event(self) -> None:
        try:
            data = await self._next_data()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise self._failed(timed_out(elapsed_ms(self.started))) from None
        except aiohttp.ClientError as exc:
            text = f"the stream broke: {exc or type(exc).__name__}"
            raise self._failed(self._error(text)) from None
        if data is None:
            raise self._failed(self._error("the stream ended without data: [DONE]"))
        if data == "[DONE]":
            self.ended = True
            return
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise self._failed(self._error(f"malformed stream event: {exc}")) from None
        if not isinstance(event, dict):
            raise self._failed(self._error("malformed stream event: not an object"))
        if event.get("error"):
            raise self._failed(self._error(f"the stream failed: {_message(event['error'])}"))
        self._take(event)

    async def _next_data(self) -> str | None:
        """The next event's data (its `data:` lines joined), or None at the end."""
        lines: list[str] = []
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return "\n".join(lines) if lines else None
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if lines:
                    return "\n".join(lines)
                continue
            if line.startswith("data:"):
                lines.append(line[5:].removeprefix(" "))

    def _take(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event.get("usage"):
            self.usage = event["usage"]
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.parts.append(content)
            entries = (choice.get("logprobs") or {}).get("content") or []
            self.logprobs.extend(float(entry["logprob"]) for entry in entries)
            self.tokens += len(entries) or (1 if content else 0)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    # --- what it says so far --------------------------------------------------------------

    def completion(self) -> Completion:
        """The answer as far as it has come, as a `Completion` (its usage once the stream
        sent it, else the prompt estimated and the tokens counted)."""
        usage = self.usage or {}
        return Completion(
            text="".join(self.parts),
            prompt_tokens=int(usage.get("prompt_tokens") or self.prompt_estimate),
            completion_tokens=int(usage.get("completion_tokens") or self.tokens),
            logprobs=list(self.logprobs) or None,
            latency_ms=elapsed_ms(self.started),
            finish_reason=self.finish_reason,
            stream=self,
        )

    # --- ending ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """End the call: an unfinished stream's connection is closed (the generation is
        cut), and the limits are settled with the tokens it used, once."""
        if not self.ended:
            self.ended = True
            self.response.close()
        else:
            self.response.release()
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            done = self.completion()
            await on_end(done.prompt_tokens + done.completion_tokens)

    def _error(self, text: str) -> CallError:
        # Not retried by the caller once tokens were handed on (`relay`); before that, the
        # tier's retries apply as to any failed call.
        return CallError(text, status=AttemptStatus.ERROR, latency_ms=elapsed_ms(self.started))

    def _failed(self, error: CallError) -> CallError:
        return self.redact(error)


def _message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
