"""Both chat clients behind one signature, `call(tier, request) -> Completion`, and CLIENTS,
the parametrisation that runs a test once through each: `workers.client` (openai SDK, one
call at a time) and `workers.aclient` (aiohttp, the workers' bulk path)."""

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from workers.aclient import ChatClient
from workers.client import call_tier
from workers.completion import Completion
from workers.settings import TierConfig

Call = Callable[[TierConfig, dict[str, Any]], Completion]


def sync_call(tier: TierConfig, request: dict[str, Any]) -> Completion:
    return call_tier(tier, "t", request)


def async_call(tier: TierConfig, request: dict[str, Any]) -> Completion:
    async def call() -> Completion:
        client = ChatClient()
        try:
            return await client.call(tier, "t", request)
        finally:
            await client.close()

    return asyncio.run(call())


CLIENTS = pytest.mark.parametrize("call", [sync_call, async_call], ids=["openai-sdk", "aiohttp"])
