"""The durability and effectively-once contracts against a real crash: SIGKILL of a real writer process during
write-behind, on a real SQLite file and on the session's real Redis server.

* Every write whose unit reported committed (the point where a worker acknowledges its event) is there after the
  kill; the kill lands while other writes still sit in the buffer.
* A killed run followed by a redelivery of every event (the worst case of at-least-once) leaves each event's
  ``once=True`` changes applied exactly once.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import REPO_ROOT
from state_env import StateEnv

from agentflow.state import StateHandle

# Run as a script from tests/, whose agentflow/ folder (the mirrored tests) must not shadow the package: the
# child gets the repository root on PYTHONPATH.
WRITER = str(REPO_ROOT / "tests" / "state_writer.py")
ROOT = REPO_ROOT


class Child:
    """One state_writer.py process and the lines it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, env: StateEnv, mode: str, *args: int, **config: Any) -> Child:
        table = msgspec.json.encode(env.config(**config)).decode()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, WRITER, mode, table, *map(str, args),
            stdout=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, **env.env, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        child = cls(proc)
        await child.wait_for(lambda: "ready" in child.lines, timeout_s=30)
        return child

    async def wait_for(self, done: Any, *, timeout_s: float) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while not done():
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"the writer exited (code {await self.proc.wait()}) after {self.lines[-3:]}")
                self.lines.append(line.decode().strip())

    async def kill(self) -> None:
        """SIGKILL, then collect what it printed before dying."""
        self.proc.kill()
        assert self.proc.stdout is not None
        rest = await self.proc.stdout.read()
        self.lines += [line.strip() for line in rest.decode().splitlines() if line.strip()]
        assert await self.proc.wait() == -9

    def numbers(self, word: str) -> set[int]:
        return {int(line.split()[1]) for line in self.lines if line.startswith(word + " ")}


@pytest.fixture(params=["sqlite", "redis"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    state = StateEnv(request.param, tmp_path, redis)
    await state.start()
    yield state
    await state.aclose()


@pytest.mark.slow
async def test_kill_9_during_write_behind_loses_no_acknowledged_write(env: StateEnv) -> None:
    child = await Child.start(env, "write", flush_interval_ms=20)
    await child.wait_for(lambda: len(child.numbers("acked")) >= 1000, timeout_s=60)
    await child.kill()
    acked, wrote = child.numbers("acked"), child.numbers("wrote")
    assert acked <= wrote
    assert wrote - acked, "the kill should land while writes wait in the write-behind buffer"
    store = await env.store()
    missing = [i for i in sorted(acked) if await StateHandle(store, "writer", f"k:{i}").get() != {"i": i}]
    assert missing == [], f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


@pytest.mark.slow
async def test_kill_9_then_redelivery_of_every_event_applies_each_once(env: StateEnv) -> None:
    events = 2000
    first = await Child.start(env, "count", 0, events)
    await first.wait_for(lambda: len(first.numbers("acked")) >= 200, timeout_s=60)
    await first.kill()
    assert "done" not in first.lines, "the first run should be killed mid-way"
    # Redeliver everything, acknowledged or not: what the first run applied must not be applied again.
    second = await Child.start(env, "count", 0, events)
    await second.wait_for(lambda: "done" in second.lines, timeout_s=120)
    assert await second.proc.wait() == 0
    assert second.numbers("acked") == set(range(events))
    store = await env.store()
    counters = [await StateHandle(store, "counter", f"c:{j}").get() for j in range(10)]
    assert counters == [events // 10] * 10
    values = [await StateHandle(store, "counter", f"e:{e}").get() for e in range(events)]
    assert values == list(range(events))
