"""A Redis server for ``agentcli benchmark --scenario state --backend redis`` and the tests: Debian's
``redis-server`` on 127.0.0.1 and a free port, with a random password, no persistence and no unix socket.

Usage (plain, synchronous)::

    with RedisServer() as server:
        server.url, server.password        # redis://127.0.0.1:PORT/0 and the requirepass secret

A missing binary raises :class:`RedisUnavailable` naming what to install (the tests install it first:
tests/redis_server.py). Nothing in agentflow depends on it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .tansu import free_port

__all__ = ["REDIS_SERVER", "RedisServer", "RedisUnavailable"]

REDIS_SERVER = "/usr/bin/redis-server"


class RedisUnavailable(RuntimeError):
    """redis-server is missing or did not come up."""


class RedisServer:
    """One redis-server process; ``url`` has no password, ``password`` is set with ``requirepass``."""

    def __init__(self, *, start_timeout_s: float = 10.0) -> None:
        binary = REDIS_SERVER if os.access(REDIS_SERVER, os.X_OK) else shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable(
                f"redis-server is not installed ({REDIS_SERVER} is missing); install it (Debian and Ubuntu: "
                "apt-get install -y redis-server) or put redis-server on PATH."
            )
        self.binary = binary
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="agentflow-redis-")
        self._log = Path(self._dir.name) / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} {'running' if self.running else 'stopped'}>"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RedisServer:
        conf = Path(self._dir.name) / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    "unixsocket ''",
                    f"requirepass {self.password}",
                    'save ""',
                    "appendonly no",
                    f"dir {self._dir.name}",
                    f"logfile {self._log}",
                    "daemonize no",
                ]
            )
            + "\n"
        )
        self.proc = subprocess.Popen([self.binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisUnavailable(f"redis-server exited at start (code {self.proc.returncode}): {self.log()}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer on {self.url} within {self.start_timeout_s} s.")

    def ping(self) -> bool:
        """AUTH and PING over a plain socket: True once the server answers both."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                reply = b""
                while b"PONG" not in reply:
                    chunk = s.recv(256)
                    if not chunk:
                        return False
                    reply += chunk
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGKILL: nothing is persisted anyway). Idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
