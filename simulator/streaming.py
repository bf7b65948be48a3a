"""`stream: true`: the answer as OpenAI's server-sent events, paced like a model generating it.

The headers go out at once; the first chunk (the role) and the first token come after the
model's latency, then one chunk per token, `1 / tokens_per_s` apart (all at once when the
behaviour sets no rate); then a chunk with the finish reason, a usage chunk when the client
set `stream_options.include_usage` (every other chunk then carries `"usage": null`), and
`data: [DONE]`. Each token chunk carries its token's logprob when they were asked for, the
same logprobs as the whole answer's.

A mid-stream fault (`fail_next(after_tokens=N)`) sends N tokens, then an error event
(`data: {"error": {...}}`, what OpenAI sends when a stream fails) and ends the stream
without `[DONE]`. A client that hangs up is counted with status 499 (nginx's "client closed
request") and the rest of the answer is not generated.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulator.answers import Answer
from simulator.protocol import SYSTEM_FINGERPRINT, ChatRequest, error_body
from simulator.state import Fault

CLIENT_CLOSED = 499


@dataclass(frozen=True, slots=True)
class StreamedAnswer:
    chat: ChatRequest
    result: Answer
    prompt_tokens: int
    logprobs: list[dict[str, Any]] | None
    latency_s: float
    tokens_per_s: float | None
    fault: Fault | None  # breaks the stream off after `fault.after_tokens` tokens

    async def send(self, request: web.Request) -> tuple[web.StreamResponse, int]:
        """Stream the answer; the response and the status to count it under."""
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        response = web.StreamResponse(headers=headers)
        try:
            await response.prepare(request)
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            status = await self._events(response)
            await response.write_eof()
        except ConnectionError:  # the client hung up: nothing more is generated
            return response, CLIENT_CLOSED
        return response, status

    async def _events(self, response: web.StreamResponse) -> int:
        gap = 1 / self.tokens_per_s if self.tokens_per_s else 0.0
        tokens = self.result.tokens
        cut = None if self.fault is None else min(self.fault.after_tokens or 0, len(tokens))
        pending = [self._chunk({"role": "assistant", "content": "", "refusal": None})]
        for n, token in enumerate(tokens):
            if n == cut:
                break
            pending.append(self._token_chunk(n, token))
            if gap and n + 1 < len(tokens):
                await response.write(b"".join(pending))  # one write per token, paced
                pending = []
                await asyncio.sleep(gap)
        if self.fault is not None:
            await response.write(b"".join([*pending, self._error(self.fault)]))
            return self.fault.status
        pending.append(self._chunk({}, finish=self.result.finish_reason))
        if self.chat.include_usage:
            pending.append(self._event({**self._head(), "choices": [], "usage": self._usage()}))
        await response.write(b"".join([*pending, b"data: [DONE]\n\n"]))
        return 200

    def _token_chunk(self, n: int, token: str) -> bytes:
        logprobs = None
        if self.logprobs is not None:
            logprobs = {"content": [self.logprobs[n]], "refusal": None}
        return self._chunk({"content": token}, logprobs=logprobs)

    def _chunk(
        self, delta: dict[str, Any], *, finish: str | None = None, logprobs: Any = None
    ) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        chunk: dict[str, Any] = {**self._head(), "choices": [choice]}
        if self.chat.include_usage:
            chunk["usage"] = None
        return self._event(chunk)

    def _head(self) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-sim-{self.result.key:016x}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.chat.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def _usage(self) -> dict[str, int]:
        completion = len(self.result.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def _error(self, fault: Fault) -> bytes:
        message = f"Injected failure mid-stream (simulator fail_next, status {fault.status})."
        return self._event(error_body(fault.status, message))

    @staticmethod
    def _event(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def generation_s(tokens_per_s: float | None, tokens: int) -> float:
    """A whole answer's time after its first token."""
    return max(0, tokens - 1) / tokens_per_s if tokens_per_s else 0.0
