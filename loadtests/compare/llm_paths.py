"""Where an `llm-chat` request's cost goes: the same closed loop of 16 users against one OpenAI-compatible server,
through three paths — a bare aiohttp `session.post` loop (`raw`), `ProviderClient.chat` alone (`client`), and
`runner.request` → agent → `ctx.llm.chat` (`runner`). Prints requests/s and the process's CPU per request.

    agentcli mock-llm --port 8089 &
    PYTHONPATH=. python loadtests/compare/llm_paths.py raw 20000        # or client / runner
    # instructions per request, whatever else the machine does (GC off so a collection's timing cannot skew it):
    AGENTFLOW_NOGC=1 valgrind --tool=callgrind --callgrind-out-file=cg.N python loadtests/compare/llm_paths.py runner N

Run it for N = 1000 and 4000 and divide the difference of the two totals by 3000 (this removes start-up).
"""

import asyncio
import gc
import os
import resource
import sys
import time

import aiohttp
import msgspec
import uvloop

from agentflow import Context, Event, Runner, config_from_dict

URL = os.environ.get("LLM_URL", "http://127.0.0.1:8089/v1")
USERS = 16
MSG = [{"role": "user", "content": "Summarise the benchmark in one line."}]
JSON = {"Content-Type": "application/json"}


async def main(path: str, n: int) -> None:
    config = config_from_dict(
        {
            "llm": {"bench": {"base_url": URL, "default_model": "mock", "max_connections": USERS}},
            "retry": {"max_attempts": 1},
        }
    )
    runner = Runner(config)

    @runner.agent("chat")
    async def chat(event: Event, ctx: Context) -> None:
        await ctx.llm.chat(MSG)

    body = msgspec.json.encode({"model": "mock", "messages": MSG})
    decode = msgspec.json.Decoder().decode
    async with runner, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=USERS)) as session:
        assert runner.llm is not None
        client = runner.llm.client("bench")
        todo = iter(range(n))

        async def raw() -> None:
            for _ in todo:
                async with session.post(URL + "/chat/completions", data=body, headers=JSON) as r:
                    decode(await r.read())

        async def direct() -> None:
            for _ in todo:
                await client.chat(MSG)

        async def through_runner() -> None:
            for i in todo:
                await runner.request("chat", i)

        user = {"raw": raw, "client": direct, "runner": through_runner}[path]
        if os.environ.get("AGENTFLOW_NOGC"):
            gc.disable()
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(USERS)))
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
    user_us = (after.ru_utime - before.ru_utime) / n * 1e6
    sys_us = (after.ru_stime - before.ru_stime) / n * 1e6
    print(
        f"{path}: {n / wall:,.0f} req/s; CPU per request {user_us:.1f} µs user + {sys_us:.1f} µs system; "
        f"peak RSS {after.ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("raw", "client", "runner"):
        sys.exit(f"usage: {sys.argv[0]} raw|client|runner REQUESTS")
    uvloop.run(main(sys.argv[1], int(sys.argv[2])))
