"""Shared fixtures: bus and runner factories that close what they create, and a polling helper.

``bus_factory`` is parametrised by backend so the bus contract suite (``test_bus_contract.py``) runs once per
backend. Today only the memory bus exists; a Kafka bus becomes one more entry in ``BUS_BACKENDS`` and one more
branch in ``_new_bus`` — the tests themselves do not change. The contract tests reuse short topic and group
names ("t", "g"), so a broker-backed factory must isolate tests itself, for example by giving each bus it
creates a unique topic/group prefix.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import pytest

from agentflow import Bus, MemoryBus, Metrics, Runner, config_from_dict

BUS_BACKENDS = ["memory"]


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


def _new_bus(backend: str, *, partitions: int, buffer_size: int, dlq_max_entries: int) -> Bus:
    if backend == "memory":
        return MemoryBus(partitions=partitions, buffer_size=buffer_size, dlq_max_entries=dlq_max_entries)
    raise AssertionError(f"no factory for bus backend {backend!r}")


@pytest.fixture(params=BUS_BACKENDS)
async def bus_factory(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    backend: str = request.param
    created: list[Bus] = []

    async def make(*, partitions: int = 4, buffer_size: int = 100, dlq_max_entries: int = 1000) -> Bus:
        bus = _new_bus(backend, partitions=partitions, buffer_size=buffer_size, dlq_max_entries=dlq_max_entries)
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
