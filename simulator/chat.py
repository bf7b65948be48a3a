"""POST /v1/chat/completions: the order in which a simulated model can fail.

    1. malformed request             -> 400 (nothing else is consumed)
    2. injected fault (fail_next)    -> its status, with Retry-After when one was given
    3. prompt over context_tokens    -> 400 context_length_exceeded
    4. over rpm / tpm                -> 429 with Retry-After (refused requests use no quota)
    5. error_rate                    -> 500 after the usual latency
    6. timeout_rate                  -> hang for hang_s, then answer normally
    7. latency (+ jitter)            -> 200 with the deterministic answer, after the first
                                        token's latency and the rest's generation time
                                        (`tokens_per_s`); or, with `stream: true`, the
                                        same answer as SSE chunks (`simulator.streaming`)
       (garbage_rate of them: 200 with junk content instead, GARBAGE)

Latency applies only to requests that reach "the model" (5-7); rejections are immediate,
as they are from real providers' gateways.
"""

import asyncio
import contextlib
import math
import time
from typing import Any

from aiohttp import web

from simulator.answers import Answer, answer, garbage_answer
from simulator.behaviour import ModelBehaviour
from simulator.limits import LimitRefusal
from simulator.logprobs import logprobs_content, target_confidence
from simulator.protocol import ChatRequest, RequestError, completion_body, parse_chat_request
from simulator.responses import STATE, STOPPING, error_reply, json_reply
from simulator.state import Fault, SimState
from simulator.streaming import CLIENT_CLOSED, StreamedAnswer, generation_s
from simulator.tokens import count_prompt_tokens

# The reply (or the stream to send), and the tokens it used (0 unless 200).
Outcome = tuple[web.Response | StreamedAnswer, int]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    arrived = time.time()  # rate windows are about when calls arrive, not when they finish
    try:
        chat = parse_chat_request(await request.read())
    except RequestError as exc:
        state.stats.record(exc.model, exc.status)
        return error_reply(exc.status, exc.message, code=exc.code, param=exc.param)
    reply, tokens = await _serve(state, request.app[STOPPING], chat)
    if isinstance(reply, StreamedAnswer):
        try:
            streamed, status = await reply.send(request)
        except asyncio.CancelledError:  # the client hung up (a server that cancels handlers)
            state.stats.record(chat.model, CLIENT_CLOSED, arrived=arrived)
            raise
        state.stats.record(chat.model, status, tokens if status == 200 else 0, arrived=arrived)
        return streamed
    state.stats.record(chat.model, reply.status, tokens, arrived=arrived)
    return reply


async def _serve(state: SimState, stopping: asyncio.Event, chat: ChatRequest) -> Outcome:
    fault = state.take_fault(chat.model, stream=chat.stream)
    if fault is not None and fault.after_tokens is None:
        return _fault_reply(fault), 0
    behaviour = state.behaviour_for(chat.model)
    prompt_tokens = count_prompt_tokens([text for _, text in chat.messages])
    if behaviour.context_tokens is not None and prompt_tokens > behaviour.context_tokens:
        return _context_reply(behaviour.context_tokens, prompt_tokens), 0
    result = answer(chat.model, chat.messages, chat.seed, chat.max_tokens, behaviour.answers)
    total_tokens = prompt_tokens + len(result.tokens)
    refusal = state.admit(chat.model, behaviour, total_tokens)
    if refusal is not None:
        return _rate_limited_reply(refusal), 0
    if state.happens(behaviour.error_rate):
        await _sleep(state.latency_s(behaviour))
        return error_reply(500, "The server had an error while processing your request."), 0
    if state.happens(behaviour.timeout_rate):
        await _hang(stopping, behaviour.hang_s)
    latency = state.latency_s(behaviour)
    if state.happens(behaviour.garbage_rate):
        result = garbage_answer(result)
    logprobs = _logprobs(chat, behaviour, result) if chat.logprobs else None
    if chat.stream:
        streamed = StreamedAnswer(
            chat, result, prompt_tokens, logprobs, latency, behaviour.tokens_per_s, fault
        )
        return streamed, total_tokens
    await _sleep(latency + generation_s(behaviour.tokens_per_s, len(result.tokens)))
    return json_reply(completion_body(chat, result, prompt_tokens, logprobs)), total_tokens


def _logprobs(chat: ChatRequest, behaviour: ModelBehaviour, result: Answer) -> list[Any]:
    confidence = target_confidence(result.difficulty, behaviour.skill)
    return logprobs_content(result.tokens, result.key, confidence, chat.top_logprobs)


async def _sleep(seconds: float) -> None:
    if seconds > 0:  # a zero sleep still costs a trip through the loop at high request rates
        await asyncio.sleep(seconds)


async def _hang(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


def _fault_reply(fault: Fault) -> web.Response:
    headers = None
    if fault.retry_after is not None:
        headers = {"Retry-After": str(math.ceil(fault.retry_after))}
    message = f"Injected failure (simulator fail_next, status {fault.status})."
    return error_reply(fault.status, message, headers=headers)


def _context_reply(limit: int, prompt_tokens: int) -> web.Response:
    message = (
        f"This model's maximum context length is {limit} tokens. However, your messages "
        f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
    )
    return error_reply(400, message, code="context_length_exceeded", param="messages")


def _rate_limited_reply(refusal: LimitRefusal) -> web.Response:
    headers = {"Retry-After": refusal.retry_after_header}
    return error_reply(429, refusal.message, code="rate_limit_exceeded", headers=headers)
