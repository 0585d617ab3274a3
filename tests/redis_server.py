"""A real Redis server for the state tests: the launcher ``agentcli benchmark`` uses (agentcli/bench/redisd.py).

The session fixture ``redis_server`` (conftest.py) starts one with a password, no persistence and no unix socket;
a missing binary raises :class:`RedisUnavailable` and the Redis tests fail rather than skip.
"""

from __future__ import annotations

from typing import Any

from system_packages import ensure

from agentcli.bench import redisd
from agentcli.bench.redisd import REDIS_SERVER, RedisUnavailable

__all__ = ["REDIS_SERVER", "RedisServer", "RedisUnavailable"]


class RedisServer(redisd.RedisServer):
    """The benchmark's launcher, after installing Debian's redis-server when it is missing (the test command
    installs what the tests need: tests/system_packages.py)."""

    def __init__(self, **kwargs: Any) -> None:
        try:
            ensure("redis-server", "redis-server")
        except RuntimeError as exc:
            raise RedisUnavailable(str(exc)) from None
        super().__init__(**kwargs)
