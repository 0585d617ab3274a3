"""A tiny agentflow app for ``agentcli benchmark --app`` in tests/test_cli.py.

``runner`` is an un-started Runner with the default config; ``make_runner(config)`` builds a fresh one, so
``--config`` can apply. ``flaky`` fails every 10th event it sees, deterministically; ``slow`` sleeps
``AGENTCLI_APP_SLEEP_MS`` (default 5) before it answers, so a test can make it twice as slow.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

from agentflow import Config, Context, Event, Runner

FAIL_EVERY = 10


def make_runner(config: Config | None = None) -> Runner:
    runner = Runner(config)
    seen = itertools.count(1)

    @runner.agent("cli.echo", name="echo")
    async def echo(event: Event, ctx: Context) -> Any:
        return event.payload

    @runner.agent("cli.flaky", name="flaky")
    async def flaky(event: Event, ctx: Context) -> None:
        if next(seen) % FAIL_EVERY == 0:
            raise ValueError("flaky fails every 10th event, on purpose")

    sleep_s = float(os.environ.get("AGENTCLI_APP_SLEEP_MS", "5")) / 1000

    @runner.agent("cli.slow", name="slow")
    async def slow(event: Event, ctx: Context) -> Any:
        await asyncio.sleep(sleep_s)
        return event.payload

    return runner


runner = make_runner()
