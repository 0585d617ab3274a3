"""State and workflows across real ``agentcli run`` worker processes on a real Kafka-protocol broker (Tansu), with
state in a real SQLite file or on the session's real Redis server (``tests/stateapp.py`` is the app).

* The durability contract end to end: a worker killed with SIGKILL during write-behind loses no state write of
  an event it acknowledged (a ``Producer.request`` reply is sent only after the acknowledgement).
* Effectively once: two workers run workflow runs, one is killed mid-run; every run's last step is applied
  exactly once, and no run is lost.
* A join across workers: parts recorded by one worker, the join completed by another from the state store.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from state_env import StateEnv
from test_cli_run import WorkerProcess
from test_kafka_processes import until

from agentflow import Producer, config_from_dict

if TYPE_CHECKING:
    from kafka_broker import TansuBroker

APP = "tests/stateapp.py:runner"
RUNS = 120


def write_config(tmp_path: Path, broker: TansuBroker, env: StateEnv, **memory: Any) -> tuple[Path, dict[str, Any]]:
    """The workers' TOML and the same settings as a dict for the test's Producer."""
    from kafka_broker import kafka_settings

    data: dict[str, Any] = {
        "bus": {"backend": "kafka", "partitions": 4},
        "runner": {"max_concurrent_events": 256, "shutdown_grace_s": 5.0},
        "kafka": kafka_settings(broker.bootstrap, prefix=f"st{os.urandom(4).hex()}."),
        "memory": msgspec.to_builtins(env.config(**memory)),
    }
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {msgspec.json.encode(v).decode()}" for k, v in table.items() if v is not None]
    path = tmp_path / f"state-{os.urandom(3).hex()}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, data


async def start_worker(tmp_path: Path, config: Path, env: StateEnv, out: Path, **extra: str) -> WorkerProcess:
    w = await WorkerProcess.start(
        tmp_path, APP, "--config", str(config), "--port", "0",
        env={**env.env, "STATEAPP_OUT": str(out), **extra},
    )  # fmt: skip
    await w.wait_ready(1)
    return w


def lines(out: Path) -> list[list[str]]:
    return [line.split() for line in out.read_text().splitlines()] if out.exists() else []


@pytest.fixture(params=["sqlite", "redis"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    env = StateEnv(request.param, tmp_path, redis)
    await env.start()
    yield env
    await env.aclose()


@pytest.fixture
async def redis_state(tmp_path: Path, redis_server: Any) -> Any:
    env = StateEnv("redis", tmp_path, redis_server)
    await env.start()
    yield env
    await env.aclose()


@pytest.mark.slow
async def test_kill_9_of_a_worker_loses_no_state_write_of_an_acknowledged_event(
    tmp_path: Path, kafka_broker: TansuBroker, state: StateEnv
) -> None:
    config, data = write_config(tmp_path, kafka_broker, state, flush_interval_ms=20)
    worker = await start_worker(tmp_path, config, state, tmp_path / "out.txt")
    replied: set[int] = set()
    sent: set[int] = set()
    stop = asyncio.Event()
    users = 64

    async def user(producer: Producer, first: int) -> None:
        n = first
        while not stop.is_set():
            sent.add(n)
            replied.add(await producer.request("writes", {"n": n}, key=f"k{n}", timeout_s=60))
            n += users

    try:
        async with Producer(config_from_dict(data)) as producer:
            tasks = [asyncio.ensure_future(user(producer, i)) for i in range(users)]
            try:
                await until(lambda: len(replied) >= 1500, 90, "1500 acknowledged writes")
                worker.proc.kill()  # SIGKILL while requests are in flight and writes wait for their flush
                assert await worker.wait() == -9
                acknowledged = set(replied)
            finally:
                stop.set()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await worker.kill()
    assert sent - acknowledged, "the kill should land while some events are not acknowledged yet"
    reader = await state.store()
    missing = [n for n in sorted(acknowledged) if await reader.get(f"write:k{n}") != {"n": n}]
    print(f"\nkill -9 on {state.kind}: {len(acknowledged)} acknowledged, {len(sent - acknowledged)} in flight")
    assert missing == [], f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


async def emit_starts(data: dict[str, Any], runs: int) -> None:
    async with Producer(config_from_dict(data)) as producer:
        await producer.emit_many("starts", [{"n": n} for n in range(runs)])


async def finals(env: StateEnv, runs: int) -> dict[str, Any]:
    reader = await env.store()
    return {f"run-{n}": await reader.get(f"final:run-{n}") for n in range(runs)}


@pytest.mark.slow
async def test_kill_9_of_one_of_two_workers_applies_each_runs_last_step_exactly_once(
    tmp_path: Path, kafka_broker: TansuBroker, redis_state: StateEnv
) -> None:
    config, data = write_config(tmp_path, kafka_broker, redis_state)
    out = tmp_path / "steps.txt"
    a = await start_worker(tmp_path, config, redis_state, out, STATEAPP_SLEEP_MS="40")
    b = await start_worker(tmp_path, config, redis_state, out, STATEAPP_SLEEP_MS="40")
    try:
        await emit_starts(data, RUNS)
        await until(lambda: sum(1 for ln in lines(out) if ln[0] == "final") >= RUNS // 4, 90, "a quarter of the runs")
        by_pid = Counter(ln[2] for ln in lines(out))
        assert by_pid[str(a.proc.pid)] > 0 and by_pid[str(b.proc.pid)] > 0, "both workers must be running steps"
        a.proc.kill()  # mid-run: steps, parts and joins of many runs are in flight on it
        assert await a.wait() == -9
        done = {ln[1] for ln in lines(out) if ln[0] == "final"}
        await until(lambda: len({ln[1] for ln in lines(out) if ln[0] == "final"}) >= RUNS, 120, "every run's last step")
        counts = await finals(redis_state, RUNS)
    finally:
        await a.kill()
        await b.kill()
    executions = Counter(ln[1] for ln in lines(out) if ln[0] == "final")
    again = sum(n - 1 for n in executions.values())
    print(f"\nkill -9 of one of two workers: {len(done)} runs done before the kill, {again} last steps run again")
    assert counts == {f"run-{n}": 1 for n in range(RUNS)}, "each run's last step applied exactly once, none lost"


@pytest.mark.slow
async def test_a_join_completes_on_another_worker_with_the_parts_the_first_one_recorded(
    tmp_path: Path, kafka_broker: TansuBroker, redis_state: StateEnv
) -> None:
    config, data = write_config(tmp_path, kafka_broker, redis_state)
    out = tmp_path / "steps.txt"
    runs = 40
    # Worker a runs every step but research.c, which hangs there: every join gets parts a and b from it.
    a = await start_worker(tmp_path, config, redis_state, out, STATEAPP_HANG_C="1")
    b: WorkerProcess | None = None
    try:
        await emit_starts(data, runs)
        parts = ("research.a", "research.b")
        await until(lambda: sum(1 for ln in lines(out) if ln[0] in parts) >= 2 * runs, 90, "parts a and b of every run")
        assert not any(ln[0] == "merge" for ln in lines(out)), "no join can complete without research.c"
        b = await start_worker(tmp_path, config, redis_state, out)
        a.proc.kill()  # its research.c events go to b, which completes every join
        assert await a.wait() == -9
        await until(lambda: sum(1 for ln in lines(out) if ln[0] == "final") >= runs, 120, "every run's last step")
        counts = await finals(redis_state, runs)
    finally:
        await a.kill()
        if b is not None:
            await b.kill()
    rows = lines(out)
    a_pid, b_pid = str(a.proc.pid), str(b.proc.pid)
    merges = {ln[1]: ln for ln in rows if ln[0] == "merge"}
    assert {ln[1] for ln in rows if ln[0] in parts} == set(merges) == {f"run-{n}" for n in range(runs)}
    assert all(ln[2] == a_pid for ln in rows if ln[0] in parts)
    assert all(ln[2] == b_pid for ln in rows if ln[0] == "research.c")
    assert all(m[2] == b_pid and m[3] == "research.a,research.b,research.c" for m in merges.values())
    assert counts == {f"run-{n}": 1 for n in range(runs)}
