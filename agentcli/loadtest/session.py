"""One load test run in this process: target + engine + collector, and the live status the view shows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentflow import ProfileSnapshot

from ..runtime import Stop
from .collector import Collector
from .model import Engine
from .plan import Plan, make_target
from .scenario import build_payload
from .targets import LoadTarget, RunnerTarget

__all__ = ["LiveStatus", "Outcome", "run_local"]


@dataclass(slots=True)
class LiveStatus:
    """What the live view shows between windows; written by whoever runs the load."""

    elapsed_s: float = 0.0
    target: float = 0.0
    vus_busy: int = 0
    vus: int = 0
    started: int = 0
    finished: int = 0
    dropped: int = 0
    errors: int = 0


@dataclass(slots=True)
class Outcome:
    collector: Collector
    target: str
    aborted: bool
    #: iterations cancelled when graceful_stop ran out
    iterations_interrupted: int
    extra: dict[str, Any] = field(default_factory=dict)
    #: an in-process runner's profile snapshot over the run
    profile: ProfileSnapshot | None = None


def engine_for(
    plan: Plan, target: LoadTarget, collector_or_cb: Callable[[Any, Any], bool], script: Any | None
) -> Engine:
    check = getattr(script, "check", None) if script is not None else None
    return Engine(
        target,
        plan.profile(),
        open_model=plan.open_model,
        on_window=collector_or_cb,
        payload=build_payload(plan.spec, script),
        check=check,
        max_vus=plan.spec.max_vus,
        think_time_s=plan.think_time_s,
        window_s=plan.window_s,
        graceful_stop_s=plan.graceful_stop_s,
    )


async def run_local(
    plan: Plan,
    script: Any | None,
    *,
    status: LiveStatus | None = None,
    target: LoadTarget | None = None,
    collector: Collector | None = None,
    stop: Stop | None = None,
) -> Outcome:
    """Run ``plan`` in this process against its target (or ``target``); return the collected figures. A
    ``stop`` that fires (the first Ctrl-C) ends the load early; the figures of what ran are kept."""
    collector = collector if collector is not None else Collector(plan)
    tgt = target if target is not None else make_target(plan)
    async with tgt:
        engine = engine_for(plan, tgt, collector.on_window, script)
        run = asyncio.create_task(engine.run(), name="agentcli-loadtest")
        if stop is not None:
            stop.on_stop(engine.stop)
        try:
            if status is not None:
                profile = engine.profile
                while not run.done():
                    await asyncio.wait({run}, timeout=0.25)
                    s = engine.stats
                    status.elapsed_s = engine.elapsed()
                    status.target = profile.target_at(status.elapsed_s)
                    status.vus_busy, status.vus = engine.busy, engine.vus
                    status.started, status.finished, status.dropped = s.started, s.finished, s.dropped
                    status.errors = collector.so_far.errors + engine.window.errors
            await run
        except BaseException:
            engine.stop()
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            raise
        finally:
            if stop is not None:
                stop.remove(engine.stop)
    outcome = Outcome(collector, tgt.describe(), engine.aborted, engine.stats.interrupted)
    if isinstance(tgt, RunnerTarget):
        outcome.profile = tgt.profile
    return outcome
