"""Statistics snapshots and the lifecycle states of a Runner (frozen msgspec Structs, cheap to copy and log)."""

from __future__ import annotations

import msgspec

from .bus.base import BusStatistics
from .lifecycle import State
from .pool import WorkerPoolStatistics

__all__ = ["AgentStatistics", "RunnerState", "RunnerStatistics", "ShutdownReport"]


#: A Runner's lifecycle state: created → starting → running → closing → closed (the one State of every resource).
RunnerState = State


class AgentStatistics(msgspec.Struct, frozen=True):
    """Live counts of one agent (``dead_lettered`` counts events it received and dead-lettered)."""

    name: str
    topic: str
    concurrency: int
    timeout_s: float
    in_flight: int
    max_in_flight: int
    handled: int
    skipped: int
    retries: int
    failed_attempts: int
    dead_lettered: int
    returned: int


class ShutdownReport(msgspec.Struct, frozen=True):
    """What the last shutdown did: whether in-flight work drained in time, and what went back to the bus."""

    grace_s: float
    drained: bool
    cancelled: int
    returned: int
    duration_s: float


class RunnerStatistics(msgspec.Struct, frozen=True):
    """Live counts of a runner, its agents, pool and bus; ``shutdown`` is set once it has closed.

    ``pending_requests`` are ``runner.request`` calls waiting for their results and ``waiting_emits`` emit and
    request calls waiting for room in the bus; ``refused_emits`` and ``refused_requests`` count the calls
    refused with BackpressureError by ``runner.max_waiting_emits`` and ``runner.max_pending_requests``.
    """

    state: str
    emitted: int
    handled: int
    skipped: int
    dead_lettered: int
    in_flight: int
    returned: int
    pending_requests: int
    waiting_emits: int
    refused_emits: int
    refused_requests: int
    agents: tuple[AgentStatistics, ...]
    pool: WorkerPoolStatistics
    bus: BusStatistics
    shutdown: ShutdownReport | None
