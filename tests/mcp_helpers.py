"""Helpers for tests against the real MCP test server (tests/mcp_servers/counter_server.py): its stdio config,
an HTTP server process, and the per-process request counts it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from agentflow import MCPConfig

SERVER = str(Path(__file__).resolve().parent / "mcp_servers" / "counter_server.py")

__all__ = ["SERVER", "HTTPServer", "alive", "server_stats", "stdio_config"]


class HTTPServer:
    """One counter server process on 127.0.0.1 speaking streamable HTTP."""

    def __init__(self, stats: Path, env: dict[str, str] | None = None) -> None:
        self.stats = stats
        self.env = env or {}
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> HTTPServer:
        env = {**os.environ, "STATS_DIR": str(self.stats), **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, SERVER, "http", str(self.port)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "PORT <n>" once it listens
        assert line.startswith("PORT "), f"the MCP test server did not start: {line!r}"
        self.port = int(line.split()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def server_stats(stats_dir: Path) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for f in stats_dir.glob("*.json"):
        data = json.loads(f.read_text())
        out[data["pid"]] = data["methods"]
    return out


def stdio_config(stats_dir: Path, **kw: Any) -> MCPConfig:
    return MCPConfig(
        transport="stdio", command=sys.executable, args=(SERVER, "stdio"), env={"STATS_DIR": str(stats_dir)}, **kw
    )


def alive(pid: int) -> bool:
    """True while the process exists, zombies included: a zombie is a child nobody reaped."""
    return Path(f"/proc/{pid}").exists()
