"""The worker's hot path (``AgentWorker._work`` handling a plain event inline) and its slow path (``_process``)
must record the same things: the same counts, the same histogram samples, the same acks, replies, per-key order
and state commits. A typed payload always takes the slow path, so the same scenario is run by two agents that
differ only in ``payload_type`` and everything they record is compared.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import Eventually, RunnerFactory

from agentflow import AgentStatistics, Context, Event, Reject, Retry, Runner, Skip

KEYS = ["a", "b", "a", None, "c", "a", "e", "b", None, "d"]


def _scenario(i: int) -> dict[str, Any]:
    # Every kind of ending the hot path has a branch for, spread over keyed and keyless events.
    kind = ("ok", "ok", "retry_once", "skip", "ok", "reject", "state", "ok", "slow", "ok")[i % 10]
    return {"i": i, "kind": kind}


def _stats(runner: Runner) -> AgentStatistics:
    return next(a for a in runner.statistics().agents if a.name == "work")


async def _run_side(make_runner: RunnerFactory, eventually: Eventually, typed: bool) -> dict[str, Any]:
    runner = make_runner({"runner": {"worker_pool_size": 4}, "retry": {"max_attempts": 3, "initial_backoff_s": 0.001}})
    seen: list[tuple[str | None, int]] = []
    attempts: dict[int, int] = {}

    async def handler(event: Event, ctx: Context) -> Any:
        p = event.payload
        attempts[p["i"]] = attempts.get(p["i"], 0) + 1
        seen.append((event.key, p["i"]))
        kind = p["kind"]
        if kind == "retry_once" and attempts[p["i"]] == 1:
            raise Retry(after_s=0.001)
        if kind == "skip":
            raise Skip("not for us")
        if kind == "reject":
            raise Reject("bad input")
        if kind == "state":
            await ctx.state.set({"last": p["i"]})
        if kind == "slow":
            await asyncio.sleep(0.005)
        return p["i"] * 2

    runner.agent("work", name="work", payload=dict if typed else None)(handler)
    n = 60
    async with runner:
        for i in range(n):
            await runner.emit("work", _scenario(i), key=KEYS[i % len(KEYS)])
        replies = await asyncio.gather(*(runner.request("work", {"i": 1000 + i, "kind": "ok"}) for i in range(5)))
        agent = runner.metrics.agent("work")

        def settled() -> bool:
            s = _stats(runner)
            return s.handled + s.skipped + s.dead_lettered == n + 5 and s.in_flight == 0

        await eventually(settled, what="every event to finish")
        stats = _stats(runner)
        keyed_order = {k: [i for key, i in seen if key == k] for k in set(KEYS) if k is not None}
        state = {}
        for k in ("a", "b", "c", "d", "e"):
            state[k] = await runner.state_store.get(f"work:{k}")
        return {
            "stats": (stats.handled, stats.skipped, stats.retries, stats.failed_attempts, stats.dead_lettered),
            "in_flight": stats.in_flight,
            "queue_wait_samples": agent.queue_wait.count,
            "duration_samples": agent.duration.count,
            "keyed_order": keyed_order,
            "replies": replies,
            "attempts": dict(sorted(attempts.items())),
            "dead": sorted(d.event.payload["i"] for d in await runner.dlq.list() if d.event is not None),
            "state": state,
        }


async def test_hot_and_slow_paths_record_the_same(make_runner: RunnerFactory, eventually: Eventually) -> None:
    hot = await _run_side(make_runner, eventually, typed=False)
    slow = await _run_side(make_runner, eventually, typed=True)
    assert hot == slow
    # And what they agree on is what the scenario means, not two equal mistakes.
    assert hot["replies"] == [2000 + 2 * i for i in range(5)]
    assert hot["in_flight"] == 0
    handled, skipped, retries, failed, dead = hot["stats"]
    assert (skipped, dead, retries) == (6, 6, 6)
    assert handled == 65 - skipped - dead
    assert failed == retries  # each retried attempt (a rejection is not a failed attempt)
    assert hot["duration_samples"] >= handled
    assert hot["queue_wait_samples"] >= handled
    assert hot["dead"] == [i for i in range(60) if i % 10 == 5]
    assert hot["state"]["e"] == {"last": 56}  # the last state write of key "e" was committed
