"""The transports under a session: the SDK's stdio and streamable-HTTP clients, and what agentflow adds to them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, TextIO, cast

import anyio
import httpx2
import mcp.types as mcp_types
from mcp import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from ...config import MCPConfig

#: JSON-RPC error code (implementation-defined range) of a request that never left this process.
NOT_SENT: Final = -32099


def _safe_target(url: str) -> str:
    """A URL without userinfo, query or fragment: what may appear in logs, reprs and metrics."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^@/?#]*@)?([^/?#]*)([^?#]*)", url)
    return url if m is None else m.group(1) + m.group(2) + m.group(3)


class _NotSentTransport(httpx2.AsyncBaseTransport):
    """The HTTP transport under the SDK's streamable-HTTP client, telling "not sent" from "lost".

    A POST that fails in transport would crash the SDK's transport task; this answers it with a JSON-RPC error
    instead, whose code says whether the request can have reached the server: ``NOT_SENT`` when the connection
    could not be made, ``CONNECTION_CLOSED`` when it broke after that.
    """

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx2.TransportError as exc:
            if request.method != "POST":
                raise
            try:
                request_id = json.loads(await request.aread()).get("id")
            except (ValueError, AttributeError):
                request_id = None
            if request_id is None:  # a notification: nobody waits for an answer
                raise
            not_sent = isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout)
            code = NOT_SENT if not_sent else mcp_types.CONNECTION_CLOSED
            body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": type(exc).__name__}}
            return httpx2.Response(
                503, headers={"content-type": "application/json"}, content=json.dumps(body).encode(), request=request
            )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _WatchedStream:
    """The transport's read stream, calling ``on_eof`` once it ends: the first sign that a server went away."""

    def __init__(self, inner: Any, on_eof: Any) -> None:
        self._inner = inner
        self._on_eof = on_eof

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_eof()
            raise

    def __aiter__(self) -> _WatchedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _WatchedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _child_stderr() -> TextIO:
    """Where a stdio server's stderr goes: this process's stderr when it is a real file (the SDK's default is
    whatever ``sys.stderr`` was when it was imported, which an embedding application or a test runner may have
    replaced by an object without a file descriptor), else nowhere."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.fileno()
                return stream
        except (AttributeError, OSError, ValueError):
            continue
    return cast(TextIO, subprocess.DEVNULL)  # the process API takes the constant where it takes a file


@asynccontextmanager
async def open_transport(
    cfg: MCPConfig, target: str, headers: Mapping[str, str], env: Mapping[str, str]
) -> AsyncIterator[tuple[Any, Any]]:
    """The (read, write) streams of one new session to ``target``; closed (process stopped) on exit."""
    if cfg.transport == "stdio":
        params = StdioServerParameters(command=cfg.command, args=list(cfg.args), env=dict(env) or None, cwd=cfg.cwd)
        async with stdio_client(params, errlog=_child_stderr()) as streams:
            yield streams
    else:
        timeout = httpx2.Timeout(cfg.connect_timeout_s, read=300.0)
        client = httpx2.AsyncClient(transport=_NotSentTransport(), headers=dict(headers), timeout=timeout)
        async with client, streamable_http_client(target, http_client=client) as streams:
            yield streams
