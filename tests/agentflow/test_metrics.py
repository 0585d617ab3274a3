"""Prometheus metrics: counts per agent and outcome, histograms, gauges, bounded labels, the HTTP endpoints."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agentflow import Context, Event, Metrics, Retry, Runner, Skip, config_from_dict

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

TIMEOUT_S = 5.0


def parse(text: str) -> dict[str, list[Sample]]:
    """Samples by sample name (``agentflow_events_handled_total``, ``..._bucket``, ...)."""
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matches = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, f"expected one sample {name}{labels}, found {len(matches)}"
    return matches[0]


async def test_counts_histograms_and_gauges_after_a_mixed_run(make_runner: RunnerFactory) -> None:
    runner = make_runner({"retry": {"max_attempts": 2, "initial_backoff_s": 0.0, "jitter_s": 0.0}})

    @runner.agent("ok")
    async def steady(event: Event, ctx: Context) -> None:
        return None

    @runner.agent("flaky")
    async def flaky(event: Event, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise Retry(after_s=0.0)

    @runner.agent("bad")
    async def broken(event: Event, ctx: Context) -> None:
        raise ValueError("always")

    @runner.agent("skip")
    async def skipper(event: Event, ctx: Context) -> None:
        raise Skip

    async with runner:
        await runner.emit_many("ok", [1, 2, 3, 4, 5])
        await runner.emit_many("flaky", [1, 2, 3])
        await runner.emit("bad", 1)
        await runner.emit_many("skip", [1, 2])
        await runner.drain(timeout_s=TIMEOUT_S)
        m = parse(runner.metrics.render().decode())
        stats = {a.name: a for a in runner.statistics().agents}

    handled = "agentflow_events_handled_total"
    assert value(m, handled, agent="steady", outcome="success") == 5
    assert value(m, handled, agent="flaky", outcome="success") == 3
    assert value(m, handled, agent="broken", outcome="success") == 0
    assert value(m, handled, agent="broken", outcome="dead_lettered") == 1
    assert value(m, handled, agent="skipper", outcome="skipped") == 2
    assert value(m, "agentflow_handler_failures_total", agent="flaky", kind="error") == 3
    assert value(m, "agentflow_handler_failures_total", agent="broken", kind="error") == 2
    assert value(m, "agentflow_handler_retries_total", agent="flaky") == 3
    assert value(m, "agentflow_handler_retries_total", agent="broken") == 1
    assert value(m, "agentflow_events_dead_lettered_total", agent="broken", reason="exhausted") == 1
    for topic, n in {"ok": 5, "flaky": 3, "bad": 1, "skip": 2}.items():
        assert value(m, "agentflow_events_emitted_total", topic=topic) == n

    # Durations are per attempt; queue waits are per event (its first attempt).
    attempts = {"steady": 5, "flaky": 6, "broken": 2, "skipper": 2}
    events = {"steady": 5, "flaky": 3, "broken": 1, "skipper": 2}
    for agent, n in attempts.items():
        a = stats[agent]
        assert value(m, "agentflow_handler_duration_seconds_count", agent=agent) == n
        assert n == a.handled + a.failed_attempts + a.skipped
        assert value(m, "agentflow_queue_wait_seconds_count", agent=agent) == events[agent]
        buckets = [s for s in m["agentflow_handler_duration_seconds_bucket"] if s.labels["agent"] == agent]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts), "cumulative buckets never decrease"
        assert buckets[-1].labels["le"] == "+Inf" and counts[-1] == n
        assert value(m, "agentflow_handler_duration_seconds_sum", agent=agent) >= 0

    assert value(m, "agentflow_dead_letters") == 1
    assert value(m, "agentflow_worker_pool_size") == 64
    assert value(m, "agentflow_worker_pool_busy") == 0
    assert value(m, "agentflow_events_in_flight", agent="steady") == 0
    assert value(m, "agentflow_bus_buffer_depth", topic="ok", group="steady") == 0


async def test_gauges_show_live_values(make_runner: RunnerFactory, eventually: Eventually) -> None:
    runner = make_runner({"runner": {"worker_pool_size": 3, "max_concurrent_events": 2}})
    release = asyncio.Event()

    @runner.agent("t", concurrency=2)
    async def blocked(event: Event, ctx: Context) -> None:
        await release.wait()

    async with runner:
        await runner.emit_many("t", [1, 2, 3, 4, 5], key=None)
        await eventually(lambda: runner.statistics().pool.busy == 2, what="two busy handlers")
        m = parse(runner.metrics.render().decode())
        assert value(m, "agentflow_worker_pool_busy") == 2
        assert value(m, "agentflow_worker_pool_size") == 3
        assert value(m, "agentflow_events_in_flight", agent="blocked") == 2
        assert value(m, "agentflow_bus_buffer_depth", topic="t", group="blocked") == 3
        release.set()
        await runner.drain(timeout_s=TIMEOUT_S)


async def test_metrics_never_touch_the_global_registry(make_runner: RunnerFactory) -> None:
    first, second = make_runner(), make_runner()  # two runners in one process must not clash
    for runner in (first, second):

        @runner.agent("t")
        async def h(event: Event, ctx: Context) -> None:
            return None

    async with first, second:
        await first.request("t", 1, timeout_s=TIMEOUT_S)
        await second.request("t", 1, timeout_s=TIMEOUT_S)
    assert first.metrics.registry is not prometheus_client.REGISTRY
    assert first.metrics.registry is not second.metrics.registry
    assert b"agentflow_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
    assert b"agentflow_events_handled_total" in first.metrics.render()


async def test_a_metrics_object_passed_in_is_used() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    runner = Runner(config_from_dict({}), metrics=metrics)

    @runner.agent("t")
    async def h(event: Event, ctx: Context) -> None:
        return None

    async with runner:
        await runner.request("t", 1, timeout_s=TIMEOUT_S)
    assert runner.metrics is metrics
    assert registry.get_sample_value("agentflow_events_handled_total", {"agent": "h", "outcome": "success"}) == 1


@pytest.mark.parametrize("limit", [None, 10])
async def test_topic_labels_are_bounded(limit: int | None) -> None:
    metrics = Metrics() if limit is None else Metrics(max_topic_labels=limit)
    runner = Runner(config_from_dict({}), metrics=metrics)
    async with runner:
        for i in range(2000):
            await runner.emit(f"topic-{i}", i)  # nobody subscribes: counted, then dropped as unrouted
    m = parse(runner.metrics.render().decode())
    topics = {s.labels["topic"]: s.value for s in m["agentflow_events_emitted_total"]}
    bound = 1000 if limit is None else limit
    assert len(topics) <= bound + 1
    assert "_other" in topics
    assert sum(topics.values()) == 2000
    assert runner.statistics().bus.unrouted == 2000


async def test_http_endpoints(make_runner: RunnerFactory, eventually: Eventually) -> None:
    runner = make_runner({"monitoring": {"metrics_enabled": True, "port": 0}, "runner": {"shutdown_grace_s": 5.0}})
    release = asyncio.Event()

    @runner.agent("t")
    async def h(event: Event, ctx: Context) -> str:
        await release.wait()
        return "ok"

    assert runner.http_address is None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
        await runner.start()
        assert runner.http_address is not None
        host, port = runner.http_address
        assert host == "127.0.0.1" and port > 0
        base = f"http://{host}:{port}"
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok", "state": "running"}
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["ready"] is True
        await runner.emit("t", 1)
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            m = parse(await resp.text())
        assert value(m, "agentflow_events_emitted_total", topic="t") == 1
        assert "agentflow_handler_duration_seconds_bucket" in m

        # While shutting down (a handler still draining) the runner is alive but not ready.
        await eventually(lambda: runner.statistics().pool.busy == 1, what="a running handler")
        closing = asyncio.create_task(runner.aclose())
        await eventually(lambda: runner.statistics().state == "closing", what="closing")
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 503
            assert await resp.json() == {"ready": False, "state": "closing"}
        release.set()
        await asyncio.wait_for(closing, TIMEOUT_S)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"{base}/healthz"):
                pass


def test_process_metrics_and_build_info_are_on_the_runners_registry() -> None:
    from prometheus_client import CollectorRegistry, ProcessCollector

    from agentflow import __version__

    m = parse(Metrics().render().decode())
    [build] = m["agentflow_build_info"]
    assert build.labels["version"] == __version__ and build.labels["python"] and build.value == 1
    assert m["process_resident_memory_bytes"][0].value > 0 and "process_cpu_seconds_total" in m
    # A registry that already has a process collector (the process-wide default one has) keeps just that one.
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    assert "process_open_fds" in Metrics(registry).render().decode()
