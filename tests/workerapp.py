"""The app the process tests run with ``agentcli run tests/workerapp.py:runner``.

``runner(config)`` registers agent ``work`` on topic ``jobs``. It handles an event by sleeping
``WORKERAPP_SLEEP_MS`` (default 0) and appending ``<event id> <pid>`` to the file named by ``WORKERAPP_OUT``,
one line per handled event, so a test can count every event handled, lost or handled twice across processes.
An event whose payload has ``"reject": true`` is rejected after the sleep instead (it goes to the dead-letter
queue, no line).
Lines go out with single O_APPEND writes, which do not interleave between processes.
"""

from __future__ import annotations

import asyncio
import os

from agentflow import Config, Context, Event, Reject, Runner

_fd: int | None = None


def _out() -> int:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["WORKERAPP_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _fd


def runner(config: Config) -> Runner:
    app = Runner(config)
    sleep_s = float(os.environ.get("WORKERAPP_SLEEP_MS", "0")) / 1000

    @app.agent("jobs")
    async def work(event: Event, ctx: Context) -> None:
        if sleep_s:
            await asyncio.sleep(sleep_s)
        if isinstance(event.payload, dict) and event.payload.get("reject"):
            raise Reject("the payload asks to be rejected")
        os.write(_out(), f"{event.id} {os.getpid()}\n".encode())

    return app
