"""A small OpenAI-like chat server whose answers a test scripts, for what the mock LLM does not do on purpose:
streams that die or stall half-way, servers that send tool arguments as objects, error events inside a stream.

It counts requests and keeps their bodies, so a test can check what was sent and that nothing was retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

Handler = Callable[[web.Request, dict[str, Any], int], Awaitable[web.StreamResponse]]


class ScriptedLLM:
    """``async with ScriptedLLM(handler) as server``: ``handler(request, body, n)`` answers the n-th (from 1)
    ``POST /v1/chat/completions``; ``server.bodies`` are the decoded requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.bodies: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> int:
        return len(self.bodies)

    async def __aenter__(self) -> ScriptedLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        self.bodies.append(body)
        return await self.handler(request, body, len(self.bodies))


async def sse_response(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


async def send(resp: web.StreamResponse, *events: dict[str, Any] | str) -> None:
    for event in events:
        data = event.encode() if isinstance(event, str) else msgspec.json.encode(event)
        await resp.write(b"data: " + data + b"\n\n")


def text_chunk(text: str, index: int = 0) -> dict[str, Any]:
    return {"id": "s1", "model": "m", "choices": [{"index": index, "delta": {"content": text}}]}


def finish_chunk(reason: str = "stop") -> dict[str, Any]:
    return {"id": "s1", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


async def drop(request: web.Request) -> web.StreamResponse:
    """Cut the connection where the handler is (a provider or proxy dying mid-answer)."""
    assert request.transport is not None
    request.transport.abort()
    raise asyncio.CancelledError  # nothing more can be answered on a dropped connection


def chat_json(message: dict[str, Any], finish_reason: str = "stop") -> web.Response:
    return web.json_response(
        {
            "id": "c1",
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        }
    )
