"""A real Redis server for the state tests: the launcher ``agentcli benchmark`` uses (agentcli/bench/redisd.py).

The session fixture ``redis_server`` (conftest.py) starts one with a password, no persistence and no unix socket;
a missing binary raises :class:`RedisUnavailable` and the Redis tests fail rather than skip.
"""

from agentcli.bench.redisd import REDIS_SERVER, RedisServer, RedisUnavailable

__all__ = ["REDIS_SERVER", "RedisServer", "RedisUnavailable"]
