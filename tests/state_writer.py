"""A worker-like child process for the state durability tests (tests/test_state_durability.py).

``python tests/state_writer.py MODE CONFIG_JSON [FIRST LAST]``, with ``CONFIG_JSON`` a ``[memory]`` table (the
Redis password comes from the environment, as in production):

* ``write``: 32 concurrent writers, forever. Event ``i`` writes ``k:i = {"i": i}`` in its own unit, prints
  ``wrote i`` once the write is buffered and ``acked i`` once ``unit.committed()`` returned — the moment a worker
  would acknowledge the event. The test kills the process with SIGKILL at some point.
* ``count``: events ``FIRST`` to ``LAST - 1``, 16 at a time. Event ``e`` adds 1 to counter ``c:<e % 10>`` with
  ``update(..., once=True)`` and writes ``e:<e> = e`` with ``set(..., once=True)``, then prints ``acked e``; at the
  end it prints ``done``.

Every line is written with one ``os.write`` as soon as it is true, so what the test reads was true when killed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys

import msgspec

from agentflow.state import StateConfig, StateHandle, StateStore


def say(line: str) -> None:
    os.write(1, f"{line}\n".encode())


async def write_forever(store: StateStore) -> None:
    counter = itertools.count()

    async def writer() -> None:
        while True:
            i = next(counter)
            unit = store.unit(f"writer:{i}")
            await StateHandle(store, "writer", f"k:{i}", unit).set({"i": i})
            say(f"wrote {i}")
            await unit.committed()
            say(f"acked {i}")

    await asyncio.gather(*(writer() for _ in range(32)))


async def count(store: StateStore, first: int, last: int) -> None:
    events = iter(range(first, last))

    async def worker() -> None:
        for e in events:
            unit = store.unit(f"counter:evt-{e}")
            unit.begin_attempt()
            h = StateHandle(store, "counter", f"e:{e}", unit)
            await h.of("counter", f"c:{e % 10}").update(lambda n: n + 1, default=0, once=True)
            await h.set(e, once=True)
            await unit.committed()
            say(f"acked {e}")

    await asyncio.gather(*(worker() for _ in range(16)))
    say("done")


async def main(mode: str, config: StateConfig, bounds: list[int]) -> None:
    async with StateStore(config) as store:
        say("ready")
        if mode == "write":
            await write_forever(store)
        else:
            await count(store, *bounds)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], msgspec.json.decode(sys.argv[2], type=StateConfig), [int(a) for a in sys.argv[3:]]))
