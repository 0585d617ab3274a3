"""A real MCP server for the tool tests, built with the official SDK's MCPServer.

Run as ``python counter_server.py stdio`` or ``python counter_server.py http [PORT]`` (prints ``PORT <n>`` once
it listens on 127.0.0.1). It keeps per-process counts of the requests it receives by method, written to
``$STATS_DIR/<pid>.json`` after every request, so tests count calls, pings and ``initialize`` on the server's
side. Its tools:

- ``echo(text)``, ``add(a, b)``: plain answers (idempotent); ``sleep(seconds)``: a slow call, ``wait(seconds)``
  the same declared idempotent; ``fail(message)``: an error result.
- ``count()``: a counter per MCP session (stateful server): 1, 2, 3 ... on one session, with the session's
  serial number in this process.
- ``whoami()``: the process id, the session's id, and whether the ``Authorization`` header equals
  ``$EXPECT_AUTH`` (the header itself is never echoed back).
- ``hang()``: from now on this session never answers (its pings included); other sessions are unaffected.
- ``grow(name)``: adds a tool ``name`` and sends ``notifications/tools/list_changed``.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from typing import Any

import anyio
from mcp.server.context import CallNext, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

STATS_DIR = os.environ.get("STATS_DIR", "")
EXPECT_AUTH = os.environ.get("EXPECT_AUTH", "")

server: MCPServer[Any] = MCPServer("counter", log_level="ERROR")
methods: dict[str, int] = {}
# By MCP session: its Mcp-Session-Id over HTTP, the process itself over stdio (one session per process).
counters: dict[str, list[int]] = {}
serials = itertools.count(1)
hung: set[str] = set()


def session_key(request: Any) -> str:
    headers = getattr(request, "headers", None)
    return (headers.get("mcp-session-id") if headers is not None else None) or "stdio"


def _write_stats() -> None:
    if not STATS_DIR:
        return
    path = os.path.join(STATS_DIR, f"{os.getpid()}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "methods": methods}, f)
    os.replace(tmp, path)


async def counting(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
    methods[ctx.method] = methods.get(ctx.method, 0) + 1
    _write_stats()
    if session_key(ctx.request) in hung and ctx.request_id is not None:
        await anyio.sleep_forever()
    return await call_next(ctx)


server._lowlevel_server.middleware.append(counting)


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
async def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool(annotations=ToolAnnotations(idempotentHint=True))
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleep, then answer."""
    await anyio.sleep(seconds)
    return f"slept {seconds}"


@server.tool(annotations=ToolAnnotations(idempotentHint=True))
async def wait(seconds: float) -> str:
    """Sleep, then answer; safe to repeat."""
    await anyio.sleep(seconds)
    return f"waited {seconds}"


@server.tool()
async def fail(message: str) -> str:
    """Always fail with the message."""
    raise ToolError(message)


@server.tool()
async def count(ctx: Context) -> dict[str, int]:
    """Count the calls made on this session."""
    key = session_key(ctx.request_context.request)
    entry = counters.get(key)
    if entry is None:
        entry = counters[key] = [next(serials), 0]
    entry[1] += 1
    return {"count": entry[1], "pid": os.getpid(), "session": entry[0]}


@server.tool()
async def whoami(ctx: Context) -> dict[str, Any]:
    """Say which process and session answered."""
    headers = ctx.headers or {}
    return {
        "pid": os.getpid(),
        "session": session_key(ctx.request_context.request),
        "auth_ok": bool(EXPECT_AUTH) and headers.get("authorization") == EXPECT_AUTH,
    }


@server.tool()
async def hang(ctx: Context) -> str:
    """Make this session stop answering."""
    hung.add(session_key(ctx.request_context.request))
    return "hung"


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool and tell the clients the list changed."""

    async def grown(x: int) -> int:
        return x * 2

    server.add_tool(grown, name=name, description="Double x.")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


async def serve_http(port: int) -> None:
    import uvicorn

    app = server.streamable_http_app()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(srv.serve)
        while not srv.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await anyio.sleep(0.01)
        bound = srv.servers[0].sockets[0].getsockname()[1]
        print(f"PORT {bound}", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    _write_stats()
    if mode == "http":
        anyio.run(serve_http, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    else:
        server.run("stdio")
