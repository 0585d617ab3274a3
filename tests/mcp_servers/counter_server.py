"""A real MCP server for the tool tests, built with the official SDK's MCPServer.

Run as ``python counter_server.py stdio`` or ``python counter_server.py http [PORT]`` (prints ``PORT <n>`` once
it listens on 127.0.0.1). It keeps per-process counts of the requests it receives by method, written to
``$STATS_DIR/<pid>.json`` after every request, so tests count calls, pings and ``initialize`` on the server's
side. Its tools:

- ``echo(text)``, ``add(a, b)``: plain answers; ``sleep(seconds)``: a slow call; ``fail(message)``: an error result.
- ``count()``: a counter per MCP session (stateful server): 1, 2, 3 ... on one session.
- ``whoami()``: the process id, the session's id, and whether the ``Authorization`` header equals
  ``$EXPECT_AUTH`` (the header itself is never echoed back).
- ``hang()``: from now on this session never answers (its pings included); other sessions are unaffected.
- ``grow(name)``: adds a tool ``name`` and sends ``notifications/tools/list_changed``.
"""

from __future__ import annotations

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
counters: dict[int, int] = {}
hung: set[int] = set()


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
    if id(ctx.session) in hung and ctx.request_id is not None:
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


@server.tool()
async def fail(message: str) -> str:
    """Always fail with the message."""
    raise ToolError(message)


@server.tool()
async def count(ctx: Context) -> dict[str, int]:
    """Count the calls made on this session."""
    key = id(ctx.session)
    counters[key] = counters.get(key, 0) + 1
    return {"count": counters[key], "pid": os.getpid(), "session": key}


@server.tool()
async def whoami(ctx: Context) -> dict[str, Any]:
    """Say which process and session answered."""
    headers = ctx.headers or {}
    return {
        "pid": os.getpid(),
        "session": id(ctx.session),
        "auth_ok": bool(EXPECT_AUTH) and headers.get("authorization") == EXPECT_AUTH,
    }


@server.tool()
async def hang(ctx: Context) -> str:
    """Make this session stop answering."""
    hung.add(id(ctx.session))
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
