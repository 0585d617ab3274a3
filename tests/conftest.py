"""Shared fixtures: bus and runner factories that close what they create, and a polling helper.

``bus_factory`` is parametrised by backend so the bus contract suite (``test_bus_contract.py``) runs once per
backend: the memory bus, and the Kafka bus against a real Tansu broker started once per session
(``kafka_broker``, tests/kafka_broker.py). The contract tests reuse short topic and group names ("t", "g"), so
the Kafka factory gives each bus it creates a unique topic/group prefix. ``MEMORY_ONLY_CONTRACT`` lists the
contract tests that describe memory-bus-only semantics (docs/kafka.md explains each).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgspec
import pytest
from kafka_broker import TansuBroker, kafka_settings
from mcp_helpers import HTTPServer
from redis_server import RedisServer
from state_env import StateEnv

from agentflow import Bus, MemoryBus, Metrics, Runner, config_from_dict

#: The repository's root: tests live in tests/agentflow/... and tests/agentcli/..., mirroring the packages.
REPO_ROOT = Path(__file__).resolve().parents[1]

BUS_BACKENDS = ["memory", "kafka"]

# Contract tests that state the memory bus's own semantics and have no Kafka equivalent; docs/kafka.md
# ("Differences from the memory bus") explains each. They run on the memory bus only — not skipped on Kafka,
# never generated for it. tests/test_kafka_bus.py covers the Kafka side of the same behaviour.
MEMORY_ONLY_CONTRACT = {
    # A Kafka topic is a durable log, not a per-group buffer: publishers wait for the brokers' confirmation,
    # never for consumers, so there is no buffer to fill, no FIFO of waiting publishers and nothing "unrouted".
    "test_publish_nowait_raises_when_full_and_publishes_nothing",
    "test_publish_nowait_never_takes_a_buffer_past_its_size",
    "test_publish_of_a_batch_never_takes_a_buffer_past_its_size",
    "test_publish_waits_for_room_then_completes",
    "test_waiting_publishers_are_served_fifo",
    "test_cancelled_waiting_publisher_does_not_strand_the_others",
    "test_publisher_cancelled_just_after_its_turn_came_passes_the_turn_on",
    "test_a_full_topic_does_not_hold_up_another_topic",
    "test_closing_the_bus_releases_waiting_publishers_and_subscribers",
    "test_publish_to_topic_without_groups_counts_unrouted",
    # Counts events buffered per group right after publish: a Kafka topic has no per-group buffer.
    "test_statistics_follow_take_ack_requeue",
    # Groups in other processes are invisible: subscriber_count is None (unknowable) instead of 0.
    "test_subscriber_count_counts_groups",
    # Retention of the .dlq topics is the brokers' (retention.ms / retention.bytes), not an in-process bound.
    "test_dead_letters_are_bounded_and_evictions_counted",
}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    # After a failure, collect the test's garbage (abandoned coroutines and tasks) before pytest formats the
    # report: a finalizer that runs inside ast.parse makes CPython 3.11.7 raise "SystemError: AST constructor
    # recursion depth mismatch" (python/cpython#106905), turning one failing test into an INTERNALERROR that
    # aborts the whole run.
    try:
        return (yield)
    except BaseException:
        gc.collect()
        raise


class BusFactory(Protocol):
    """Creates a started bus; the fixture closes every bus it created."""

    async def __call__(self, *, partitions: int = 4, buffer_size: int = 100, dlq_max_entries: int = 1000) -> Bus: ...


class RunnerFactory(Protocol):
    """Creates an unstarted Runner from a config dict; the fixture closes every runner it created."""

    def __call__(
        self, config: Mapping[str, Any] | None = None, *, bus: Bus | None = None, metrics: Metrics | None = None
    ) -> Runner: ...


Eventually = Callable[..., Awaitable[None]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the Kafka broker ``kafka``: those using the ``kafka_broker`` fixture, and the
    Kafka instances of the bus contract suite. ``pytest -m "not kafka"`` then runs without starting it."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("bus_factory") if callspec is not None else None
        if "kafka_broker" in names or backend == "kafka":
            item.add_marker(pytest.mark.kafka)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bus_factory" in metafunc.fixturenames:
        name = metafunc.function.__name__
        backends = [b for b in BUS_BACKENDS if b == "memory" or name not in MEMORY_ONLY_CONTRACT]
        metafunc.parametrize("bus_factory", backends, indirect=True)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TansuBroker]:
    """One Tansu broker for the whole session (~0.1 s to start); a missing binary fails, never skips."""
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server (Debian's) for the whole session; a missing binary fails, never skips."""
    with RedisServer() as server:
        yield server


STATE_BACKENDS = ["memory", "sqlite", "redis"]


async def _state_env(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[StateEnv]:
    kind: str = request.param
    redis = request.getfixturevalue("redis_server") if kind == "redis" else None
    env = StateEnv(kind, tmp_path, redis)
    await env.start()
    yield env
    await env.aclose()


@pytest.fixture(params=STATE_BACKENDS)
async def state(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[StateEnv]:
    """The state contract's backends: memory, a real SQLite file, the session's real Redis server."""
    async for env in _state_env(request, tmp_path):
        yield env


@pytest.fixture(params=[b for b in STATE_BACKENDS if b != "memory"])
async def durable_state(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[StateEnv]:
    """The backends with a write-behind buffer (the memory backend applies writes at once, nothing to flush)."""
    async for env in _state_env(request, tmp_path):
        yield env


def _new_bus(
    request: pytest.FixtureRequest, backend: str, *, partitions: int, buffer_size: int, dlq_max_entries: int
) -> Bus:
    if backend == "memory":
        return MemoryBus(partitions=partitions, buffer_size=buffer_size, dlq_max_entries=dlq_max_entries)
    if backend == "kafka":
        from agentflow.bus.kafka import KafkaBus
        from agentflow.config import KafkaConfig

        broker: TansuBroker = request.getfixturevalue("kafka_broker")
        # Every bus gets its own topic and group prefix: the contract tests reuse the names "t" and "g".
        prefix = f"{uuid.uuid4().hex[:10]}."
        settings = kafka_settings(broker.bootstrap, prefix=prefix)
        return KafkaBus(msgspec.convert(settings, KafkaConfig), partitions=partitions, buffer_size=buffer_size)
    raise AssertionError(f"no factory for bus backend {backend!r}")


@pytest.fixture
async def bus_factory(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    backend: str = request.param
    created: list[Bus] = []

    async def make(*, partitions: int = 4, buffer_size: int = 100, dlq_max_entries: int = 1000) -> Bus:
        bus = _new_bus(
            request, backend, partitions=partitions, buffer_size=buffer_size, dlq_max_entries=dlq_max_entries
        )
        created.append(bus)
        await bus.start()
        return bus

    yield make
    for bus in reversed(created):
        await bus.aclose()


@pytest.fixture
async def make_runner() -> AsyncIterator[RunnerFactory]:
    created: list[Runner] = []

    def make(
        config: Mapping[str, Any] | None = None, *, bus: Bus | None = None, metrics: Metrics | None = None
    ) -> Runner:
        runner = Runner(config_from_dict(config or {}), bus=bus, metrics=metrics)
        created.append(runner)
        return runner

    yield make
    for runner in reversed(created):
        await runner.aclose()


@pytest.fixture
def eventually() -> Eventually:
    """``await eventually(lambda: cond, timeout_s=5)``: poll until true, else fail with ``what``."""

    async def wait(predicate: Callable[[], bool], *, timeout_s: float = 5.0, what: str = "condition") -> None:
        deadline = time.perf_counter() + timeout_s
        while not predicate():
            if time.perf_counter() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            await asyncio.sleep(0.002)

    return wait


# ---- MCP test servers (tests/mcp_servers/counter_server.py, helpers in tests/mcp_helpers.py) ------------------


@pytest.fixture
def stats_dir(tmp_path: Path) -> Path:
    d = tmp_path / "stats"
    d.mkdir()
    return d


@pytest.fixture
def http_servers(stats_dir: Path) -> Iterator[Callable[..., HTTPServer]]:
    made: list[HTTPServer] = []

    def make(env: dict[str, str] | None = None) -> HTTPServer:
        server = HTTPServer(stats_dir, env).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()
