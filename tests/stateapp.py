"""The app the state and workflow process tests run with ``agentcli run tests/stateapp.py:runner``.

* Agent ``write`` on topic ``writes``: ``ctx.state.set({"n": n})`` for the event's key, returns ``n``. A
  ``Producer.request`` reply therefore means the event was acknowledged, which means its write was committed.
* Agent ``start`` on topic ``starts``: starts run ``run-<n>`` of workflow ``pipeline`` (the run id from the
  event, so a redelivered start emits the same events).
* Workflow ``pipeline``: ``plan`` → ``research.a``, ``research.b``, ``research.c`` → join ``merge`` → ``final``.
  Every step sleeps ``STATEAPP_SLEEP_MS`` and appends ``<step> <run> <pid> [<part steps>]`` to the file
  ``STATEAPP_OUT`` names (single O_APPEND writes, which do not interleave between processes). ``final`` adds 1
  to ``final:<run>`` with ``once=True``: the effect that must be applied exactly once per run. With
  ``STATEAPP_HANG_C=1``, ``research.c`` never returns in this process (another worker must take it over).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agentflow import Config, Context, Event, Runner

_fd: int | None = None


def _say(line: str) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["STATEAPP_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{line}\n".encode())


def _run(event: Event) -> str:
    return (event.headers or {}).get("agentflow-run", "?")


def runner(config: Config) -> Runner:
    app = Runner(config)
    sleep_s = float(os.environ.get("STATEAPP_SLEEP_MS", "0")) / 1000
    hang_c = os.environ.get("STATEAPP_HANG_C") == "1"
    pid = os.getpid()

    @app.agent("writes")
    async def write(event: Event, ctx: Context) -> int:
        n: int = event.payload["n"]
        await ctx.state.set({"n": n})
        return n

    @app.agent("starts")
    async def start(event: Event, ctx: Context) -> None:
        await app.start_workflow("pipeline", event.payload, run_id=f"run-{event.payload['n']}")

    def step(name: str) -> Any:
        async def handler(event: Event, ctx: Context) -> Any:
            if hang_c and name == "research.c":
                await asyncio.Event().wait()
            if sleep_s:
                await asyncio.sleep(sleep_s)
            parts = ",".join(sorted(event.payload)) if name == "merge" else ""
            _say(f"{name} {_run(event)} {pid} {parts}".rstrip())
            return {"step": name, "pid": pid}

        handler.__name__ = name.replace(".", "_")
        return handler

    async def final(event: Event, ctx: Context) -> None:
        if sleep_s:
            await asyncio.sleep(sleep_s)
        run = _run(event)
        await ctx.state.of("final", run).update(lambda n: n + 1, default=0, once=True)
        _say(f"final {run} {pid}")

    wf = app.workflow("pipeline")
    wf.step("plan", step("plan"))
    wf.parallel("research", {"a": step("research.a"), "b": step("research.b"), "c": step("research.c")}, after="plan")
    wf.join("merge", step("merge"), after="research", timeout_s=120)
    wf.step("final", final, after="merge")
    return app
