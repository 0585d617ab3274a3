"""The app the insight tests profile: ``make_runner(config)`` (for ``--app`` and ``agentcli run``).

* ``research`` (topic ``research``) takes ``INSIGHT_SLEEP_MS`` (default 3) per event and hands each on to
  ``notify``; run with ``[agents.research] concurrency = 1`` it is the saturated agent of a flood.
* ``notify`` (topic ``notify``) asks the first LLM provider a deterministic question (temperature 0) when one is
  configured: with the cache off, every one of those calls misses it.
* ``audit`` (topic ``notify`` too) does nothing: the agent with no problem.
"""

from __future__ import annotations

import asyncio
import os

from agentflow import Config, Context, Event, Runner


def make_runner(config: Config) -> Runner:
    runner = Runner(config)
    sleep_s = float(os.environ.get("INSIGHT_SLEEP_MS", "3")) / 1000

    @runner.agent("research")
    async def research(event: Event, ctx: Context) -> None:
        await asyncio.sleep(sleep_s)
        await ctx.emit("notify", event.payload)

    @runner.agent("notify")
    async def notify(event: Event, ctx: Context) -> None:
        if runner.config.llm:
            await ctx.llm.chat([{"role": "user", "content": f"summarise item {event.payload}"}], temperature=0)

    @runner.agent("notify", name="audit")
    async def audit(event: Event, ctx: Context) -> None:
        return None

    return runner
