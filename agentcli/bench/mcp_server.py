"""The MCP server ``agentcli benchmark --scenario mcp`` calls: the official SDK's ``MCPServer`` with one no-op tool.

    python -m agentcli.bench.mcp_server stdio          # one session over stdin/stdout
    python -m agentcli.bench.mcp_server http [PORT]    # streamable HTTP on 127.0.0.1; prints "PORT <n>" once it listens

``echo(text)`` returns ``text``: the call costs the protocol, not the tool.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["main"]


async def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


def _server() -> Any:
    from mcp.server.mcpserver import MCPServer

    server: MCPServer[Any] = MCPServer("agentcli-bench", log_level="ERROR")
    server.add_tool(echo, name="echo")
    return server


async def _serve_http(port: int) -> None:
    import anyio
    import uvicorn

    app = _server().streamable_http_app()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False)
    srv = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(srv.serve)
        while not srv.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await anyio.sleep(0.01)
        print(f"PORT {srv.servers[0].sockets[0].getsockname()[1]}", flush=True)


def main(argv: list[str]) -> None:
    mode = argv[0] if argv else "stdio"
    if mode == "http":
        import anyio

        anyio.run(_serve_http, int(argv[1]) if len(argv) > 1 else 0)
    else:
        _server().run("stdio")


if __name__ == "__main__":
    main(sys.argv[1:])
