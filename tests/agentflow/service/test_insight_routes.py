"""/v1/profile, /v1/costs and /alerts, and the /debug profiling routes, over real HTTP: what they answer, and
the token rules (401 without the token, 403 or a refused start beyond loopback without one)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import tracemalloc
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
import pytest

from agentflow import ConfigError, Context, Event, ProfileReport, ProfileSnapshot, Runner

if TYPE_CHECKING:
    from conftest import RunnerFactory

TOKEN = "insight-token-for-tests"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def url(runner: Runner, path: str) -> str:
    assert runner.http_address is not None
    host, port = runner.http_address
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}{path}"


async def get(http: aiohttp.ClientSession, target: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(target, headers=headers) as resp:
        return resp.status, await resp.json()


def busy_runner(make_runner: RunnerFactory, **monitoring: Any) -> Runner:
    runner = make_runner({"monitoring": {"metrics_enabled": True, "port": 0, **monitoring}})

    @runner.agent("work")
    async def work(event: Event, ctx: Context) -> None:
        await asyncio.sleep(0.001)

    return runner


async def test_the_profile_route_answers_the_report_and_the_snapshot(
    make_runner: RunnerFactory, http: aiohttp.ClientSession
) -> None:
    runner = busy_runner(make_runner)
    async with runner:
        await runner.emit_many("work", list(range(30)))
        await runner.drain(timeout_s=5.0)
        status, body = await get(http, url(runner, "/v1/profile"))
        assert status == 200
        report = msgspec.convert(body, ProfileReport)
        assert report.format == "agentflow.profile/1" and report.totals.events == 30
        status, body = await get(http, url(runner, "/v1/profile?format=snapshot"))
        snap = msgspec.convert(body, ProfileSnapshot)
        assert status == 200 and snap.agents[0].handled == 30
        status, body = await get(http, url(runner, "/v1/profile?format=flamegraph"))
        assert status == 400 and "neither 'report' nor 'snapshot'" in body["error"]
        status, body = await get(http, url(runner, "/v1/costs?window_s=600"))
        assert status == 200 and body["total"]["cost_usd"] == 0 and "no [llm.*] provider" in body["source"]
        status, body = await get(http, url(runner, "/v1/costs?window_s=nan"))
        assert status == 400 and "window_s='nan' is not a number" in body["error"]
        status, body = await get(http, url(runner, "/alerts"))
        assert status == 200 and body["alerts"] == [] and "No [monitoring.alerts] threshold" in body["note"]


async def test_with_a_token_set_the_routes_need_it(
    make_runner: RunnerFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTFLOW_HTTP_TOKEN", TOKEN)
    runner = busy_runner(make_runner, profiling=True)
    async with runner:
        for path in ("/v1/profile", "/v1/costs", "/alerts", "/debug/loop", "/debug/tasks"):
            status, body = await get(http, url(runner, path))
            assert status == 401, path
            assert "bearer token is required" in body["error"]
            status, _ = await get(http, url(runner, path), token=TOKEN)
            assert status == 200, path
        async with http.get(url(runner, "/metrics")) as resp:
            assert resp.status == 200  # Prometheus scrapes need no token


async def test_beyond_loopback_without_a_token_reports_are_refused_and_profiling_refuses_to_start(
    make_runner: RunnerFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTFLOW_HTTP_TOKEN", raising=False)
    runner = busy_runner(make_runner, host="0.0.0.0")
    async with runner:
        status, body = await get(http, url(runner, "/v1/profile"))
        assert status == 403
        assert "served beyond loopback only with a bearer token" in body["error"]
        assert "AGENTFLOW_HTTP_TOKEN" in body["error"]
        async with http.get(url(runner, "/metrics")) as resp:
            assert resp.status == 200
    profiling = busy_runner(make_runner, host="0.0.0.0", profiling=True)
    with pytest.raises(ConfigError, match=r"Profiling \(/debug/\*\) is enabled on 0.0.0.0, beyond loopback"):
        await profiling.start()


async def test_profiling_is_off_by_default(make_runner: RunnerFactory, http: aiohttp.ClientSession) -> None:
    runner = busy_runner(make_runner)
    async with runner, http.get(url(runner, "/debug/profile?seconds=0.1")) as resp:
        assert resp.status == 404
    assert runner.service is None or runner.service.debug is None


def burn_cpu(ms: float) -> int:
    """Busy work the CPU profile must show by name."""
    import time

    n, end = 0, time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        n += 1
    return n


async def test_a_cpu_profile_of_the_live_process_shows_where_the_time_goes(
    make_runner: RunnerFactory, http: aiohttp.ClientSession
) -> None:
    runner = make_runner({"monitoring": {"metrics_enabled": True, "port": 0, "profiling": True}})
    stop = asyncio.Event()

    @runner.agent("cpu")
    async def cpu(event: Event, ctx: Context) -> None:
        while not stop.is_set():
            burn_cpu(5)
            await asyncio.sleep(0)

    async with runner:
        await runner.emit("cpu", 1)
        profile = asyncio.ensure_future(get(http, url(runner, "/debug/profile?seconds=1&interval_ms=2")))
        await asyncio.sleep(0.2)
        status, body = await get(http, url(runner, "/debug/profile?seconds=0.1"))
        assert status == 409 and "being taken already" in body["error"]
        status, prof = await profile
        stop.set()
    assert status == 200
    assert prof["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = prof["shared"]["frames"]
    [sampled] = prof["profiles"]
    assert sampled["type"] == "sampled" and len(sampled["samples"]) == len(sampled["weights"])
    names = {frames[i]["name"] for stack in sampled["samples"] for i in stack}
    assert "burn_cpu" in names
    burning = sum(w for s, w in zip(sampled["samples"], sampled["weights"], strict=True)
                  if any(frames[i]["name"] == "burn_cpu" for i in s))  # fmt: skip
    assert burning > 0.5 * sampled["endValue"]  # the loop thread spent most of its time there
    cost = prof["agentflow"]
    assert cost["samples"] > 20 and 0 <= cost["sampler_cpu_share"] < 1  # of 500 asked for: a loaded machine gets fewer


async def test_short_callbacks_of_a_busy_loop_are_seen_not_taken_for_idle(make_runner: RunnerFactory) -> None:
    # Callbacks of 0.2 ms back to back: the loop never sleeps, but it gives up the GIL at every turn (its poll for
    # I/O). A sampler that waited longer than a callback for the GIL would only ever get it there, and every
    # sample would show the idle loop.
    from agentflow.insight.sampler import cpu_profile

    runner = make_runner()
    stop = asyncio.Event()

    @runner.agent("cpu")
    async def cpu(event: Event, ctx: Context) -> None:
        while not stop.is_set():
            burn_cpu(0.2)
            await asyncio.sleep(0)

    before = signal.getsignal(signal.SIGPROF)
    async with runner:
        await runner.emit("cpu", 1)
        prof = await cpu_profile(1.0, interval_s=0.002)
        stop.set()
    assert prof["agentflow"]["clock"] == "cpu"  # the loop runs on the main thread: SIGPROF samples
    assert signal.getsignal(signal.SIGPROF) is before
    frames = prof["shared"]["frames"]
    [sampled] = prof["profiles"]
    burning = sum(w for s, w in zip(sampled["samples"], sampled["weights"], strict=True)
                  if any(frames[i]["name"] == "burn_cpu" for i in s))  # fmt: skip
    assert burning > 0.5 * sampled["endValue"], f"{burning / sampled['endValue']:.0%} of the samples in burn_cpu"


def test_off_the_main_thread_a_sampler_thread_takes_the_profile() -> None:
    from agentflow.insight.sampler import cpu_profile

    switch = sys.getswitchinterval()

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()

        async def cpu() -> None:
            while not stop.is_set():
                burn_cpu(5)
                await asyncio.sleep(0)

        task = asyncio.ensure_future(cpu())
        prof = await cpu_profile(0.5, interval_s=0.002)
        stop.set()
        await task
        return prof

    done: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: done.append(asyncio.run(main())))
    thread.start()
    thread.join(30)
    [prof] = done
    assert prof["agentflow"]["clock"] == "wall" and prof["agentflow"]["samples"] > 0
    frames = prof["shared"]["frames"]
    assert "burn_cpu" in {frames[i]["name"] for stack in prof["profiles"][0]["samples"] for i in stack}
    assert sys.getswitchinterval() == switch  # put back


async def test_closing_the_runner_ends_a_cpu_profile_early_with_what_it_has(
    make_runner: RunnerFactory, http: aiohttp.ClientSession
) -> None:
    runner = busy_runner(make_runner, profiling=True)
    await runner.start()
    profile = asyncio.ensure_future(get(http, url(runner, "/debug/profile?seconds=60")))
    await asyncio.sleep(0.3)
    burn_cpu(200)  # CPU time for the profile to sample
    t0 = asyncio.get_running_loop().time()
    await runner.aclose()
    closed_in = asyncio.get_running_loop().time() - t0
    status, prof = await profile
    assert closed_in < 5.0  # not the profile's 60 s: a shutdown is not held by someone profiling
    assert status == 200 and prof["agentflow"]["stopped_early"] is True
    assert 0.3 < prof["agentflow"]["seconds"] < 5.0 and prof["agentflow"]["samples"] > 0


async def test_heap_tasks_and_loop(make_runner: RunnerFactory, http: aiohttp.ClientSession) -> None:
    runner = busy_runner(make_runner, profiling=True)
    was_tracing = tracemalloc.is_tracing()
    async with runner:
        status, heap = await get(http, url(runner, "/debug/heap?limit=5"))
        assert status == 200 and heap["started_now"] is not was_tracing and heap["tracing"] is True
        keep = [bytearray(1000) for _ in range(2000)]  # noqa: F841 - held while the next snapshot is taken
        status, heap = await get(http, url(runner, "/debug/heap?limit=5&stop=true"))
        assert status == 200 and heap["started_now"] is False and len(heap["top"]) == 5
        assert any(t["file"].endswith("test_insight_routes.py") for t in heap["top"])
        assert heap["tracing"] is False and "has been stopped" in heap["note"]
        status, tasks = await get(http, url(runner, "/debug/tasks"))
        assert status == 200
        names = {t["name"] for t in tasks["tasks"]}
        assert {"agentflow-dispatch-work", "agentflow-worker-work-0", "agentflow-watchdog"} <= names
        dispatch = next(t for t in tasks["tasks"] if t["name"] == "agentflow-dispatch-work")
        assert any("_dispatch" in line for line in dispatch["stack"])
        status, loop = await get(http, url(runner, "/debug/loop"))
        assert status == 200 and loop["lag"]["interval_ms"] == 50.0 and loop["tasks"] >= 3
    if was_tracing:
        tracemalloc.start()
