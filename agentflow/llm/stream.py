"""Reading a chat completion streamed as server-sent events (``stream=True``): text deltas joined into one answer,
time to first token and inter-token latency recorded as the chunks arrive."""

from __future__ import annotations

import time

import aiohttp
import msgspec

from ..errors import LLMBadRequestError
from .failures import Failures
from .metrics import ModelMetrics
from .tokens import estimate_tokens
from .types import CHUNK_DECODER, ChatChoice, ChatMessage, ChatResponse, Usage

__all__ = ["read_stream"]


async def read_stream(
    resp: aiohttp.ClientResponse, failures: Failures, model: str, t0: float, m: ModelMetrics
) -> ChatResponse:
    """Read the SSE body of ``resp`` (bounded by ``max_response_bytes``) into one :class:`ChatResponse`."""
    parts: list[str] = []
    usage: Usage | None = None
    rid = ""
    first: float | None = None
    last = 0.0
    size = 0
    limit = failures.config.max_response_bytes
    async for line in resp.content:
        size += len(line)
        if size > limit:
            raise failures.too_large(model, limit)
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        try:
            chunk = CHUNK_DECODER.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise LLMBadRequestError(
                f"LLM provider {failures.name!r} sent a stream event that is not valid JSON ({exc}); check base_url.",
                provider=failures.name,
                model=model,
            ) from None
        rid = rid or chunk.id
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                now = time.perf_counter()
                if first is None:
                    first = now
                    m.ttft.observe(now - t0)
                else:
                    m.inter_token.observe(now - last)
                last = now
                parts.append(choice.delta.content)
    text = "".join(parts)
    if usage is None:  # a provider that ignores stream_options: estimate, so budgets and costs still move
        usage = Usage(completion_tokens=estimate_tokens(text))
        usage.total_tokens = usage.completion_tokens
    return ChatResponse(
        id=rid,
        model=model,
        choices=[ChatChoice(index=0, message=ChatMessage(role="assistant", content=text), finish_reason="stop")],
        usage=usage,
        ttft_s=None if first is None else first - t0,
    )
