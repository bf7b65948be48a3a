"""The workers' chat client behind one signature, `call(tier, request) -> Completion`, and
CLIENTS, the parametrisation that runs a test through it (one client since the synchronous
openai-SDK stack was deleted; the marker stays so tests can add a client back)."""

import asyncio
from collections.abc import Callable

import pytest

from workers.chat import ChatRequest, Completion
from workers.http_client import ChatClient
from workers.settings import TierConfig

Call = Callable[[TierConfig, ChatRequest], Completion]


def async_call(tier: TierConfig, request: ChatRequest) -> Completion:
    async def call() -> Completion:
        client = ChatClient()
        try:
            return await client.call(tier, request)
        finally:
            await client.close()

    return asyncio.run(call())


CLIENTS = pytest.mark.parametrize("call", [async_call], ids=["aiohttp"])
