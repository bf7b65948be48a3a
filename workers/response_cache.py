"""The response cache: a request whose key was answered before (any job, same database) is
answered from the ledger, with no call and no cost.

The key is a SHA-256 of the request body a tier would send (`ChatRequest.body`): the model,
the messages (system prompt included), and every sampling parameter — temperature,
max_tokens, logprobs, seed and whatever a live caller passes through (stop, top_p, tools,
response_format, ...). Anything that could change the answer changes the key; nothing else
(not the tier's name, URL or price) does. A job that wants other samples of the same prompts
sets another `--seed`, or `--no-cache`.

It is a function of (tier, request): `cache_key` and `lookup_answers` serve any path — the
workers' answer step (`ResponseCache`, which gathers the lookups of the prompts in flight into
one query), the gateway, a batch path (one `lookup_answers` per chunk of prompts before
building a batch file), and `submit --dry-run`."""

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from models.response_cache import LOOKUP_CHUNK, CachedRow, lookup_responses
from models.types import utcnow
from workers.chat import ChatRequest, Completion
from workers.settings import TierConfig

# Changes when the key's recipe does, so old keys can never match a new recipe's requests.
KEY_VERSION = "v1"
Key = str


def cache_key(tier: TierConfig, request: ChatRequest) -> Key:
    """The request's key on this tier: a hash of the body it sends (canonical JSON)."""
    body = json.dumps(
        request.body(tier.model), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(f"{KEY_VERSION}\n{body}".encode()).hexdigest()


def caches(tier: TierConfig, job_cache: bool) -> bool:
    """Whether a call reads and writes the cache: both the tier and the job allow it."""
    return tier.cache and job_cache


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer from the cache, and the attempt that paid for it."""

    row: CachedRow

    @property
    def attempt_id(self) -> int:
        return self.row.attempt_id

    @property
    def saved_usd(self) -> float:
        return self.row.cost_usd

    def completion(self) -> Completion:
        """The answer as its call returned it (its usage, its logprobs); the body is
        rebuilt in the chat-completions shape for a caller that reads it (the gateway)."""
        row = self.row
        body = {
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": row.response},
                    "finish_reason": row.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "total_tokens": row.prompt_tokens + row.completion_tokens,
            },
        }
        return Completion(
            text=row.response,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            logprobs=row.logprobs,
            latency_ms=0.0,
            finish_reason=row.finish_reason,
            body=body,
        )


def lookup_answers(engine: Engine, keys: Sequence[Key]) -> dict[Key, CachedAnswer]:
    """The cached answers among `keys` (one indexed query per 500 keys): for synchronous
    callers, e.g. a batch path deciding which lines to leave out of a batch file."""
    with engine.connect() as conn:
        rows = lookup_responses(conn=conn, keys=keys)
    return {key: CachedAnswer(row) for key, row in rows.items()}


def cache_row(
    tier: TierConfig, key: Key, completion: Completion, cost_usd: float
) -> dict[str, Any]:
    """What the ledger stores for a new answer (the record's `cache`; it adds attempt_id)."""
    return {
        "key": key,
        "tier": tier.name,
        "model": tier.model,
        "response": completion.text,
        "logprobs": completion.logprobs,
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "cost_usd": cost_usd,
        "created_at": utcnow(),
    }


class ResponseCache:
    """Lookups from the call loop's coroutines, gathered: every key asked for while a query
    is being prepared goes into that one query (a message's prompts start together, so a
    message of 50 costs one query, not 50). For the call loop only (one thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.waiting: dict[Key, list[asyncio.Future[CachedAnswer | None]]] = {}
        self.scheduled = False
        self.queries: set[asyncio.Task[None]] = set()  # held, so none is collected midway

    async def find(self, key: Key) -> CachedAnswer | None:
        future: asyncio.Future[CachedAnswer | None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(key, []).append(future)
        if not self.scheduled:
            # After the coroutines already ready to run have asked too (call_soon runs
            # after them): they are the rest of the message.
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
        return await future

    def _start(self) -> None:
        self.scheduled = False
        waiting, self.waiting = self.waiting, {}
        keys = list(waiting)
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = {key: waiting[key] for key in keys[start : start + LOOKUP_CHUNK]}
            task = asyncio.ensure_future(self._answer(chunk))
            self.queries.add(task)
            task.add_done_callback(self.queries.discard)

    async def _answer(self, chunk: dict[Key, list[asyncio.Future[CachedAnswer | None]]]) -> None:
        try:
            found = await asyncio.to_thread(lookup_answers, self.engine, list(chunk))
        except Exception as exc:  # every waiter fails alike (its task retries its message)
            for futures in chunk.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for key, futures in chunk.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(key))
