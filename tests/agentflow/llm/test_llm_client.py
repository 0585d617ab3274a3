"""The pooled provider client against the mock server over real HTTP: calls, errors, retries, breakers,
limits, batching, pool limits, caching and secrets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from agentflow.config import LLMConfig, config_from_dict
from agentflow.errors import (
    CircuitOpenError,
    LLMAuthError,
    LLMBadRequestError,
    LLMRateLimitedError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from agentflow.llm.client import ProviderClient
from agentflow.llm.hub import LLMHub
from agentflow.llm.mock import Faults, LatencyModel, MockLLMServer
from agentflow.metrics import Metrics
from agentflow.resilience.limits import RateLimiter

if TYPE_CHECKING:
    from conftest import Eventually

MSG = [{"role": "user", "content": "hello there"}]
ServerFactory = Callable[..., Awaitable[MockLLMServer]]


@pytest.fixture
async def mock_server() -> AsyncIterator[ServerFactory]:
    made: list[MockLLMServer] = []

    async def make(**kwargs: Any) -> MockLLMServer:
        server = MockLLMServer(**kwargs)
        made.append(server)
        await server.start()
        return server

    yield make
    for server in made:
        await server.aclose()


def cfg(server: MockLLMServer, **over: Any) -> LLMConfig:
    """A provider config for ``server``: fast retries, no jitter, nested tables given as dicts."""
    data: dict[str, Any] = {"base_url": server.url, "default_model": "m"}
    retry = {"initial_backoff_s": 0.0, "jitter_s": 0.0, "max_backoff_s": 0.0}
    retry.update(over.pop("retry", {}))
    data["retry"] = retry
    data.update(over)
    return config_from_dict({"llm": {"p": data}}).llm["p"]


@pytest.fixture
async def hubs() -> AsyncIterator[Callable[..., Awaitable[LLMHub]]]:
    made: list[LLMHub] = []

    async def make(config: LLMConfig, *, env: dict[str, str] | None = None, metrics: Metrics | None = None) -> LLMHub:
        hub = LLMHub({"p": config}, env=env or {}, metrics=metrics)
        made.append(hub)
        await hub.start()
        return hub

    yield make
    for hub in made:
        await hub.aclose()


# ---- the calls -----------------------------------------------------------------------------------------


async def test_chat_embed_complete(mock_server: ServerFactory) -> None:
    server = await mock_server(dimensions=4)
    async with ProviderClient("p", cfg(server), env={}) as client:
        reply = await client.chat(MSG)
        assert reply.text.startswith("echo:hello there") and reply.usage.total_tokens == 19
        emb = await client.embed(["a", "b"])
        assert [len(v) for v in emb.vectors] == [4, 4]
        comp = await client.complete(["x", "y"])
        assert comp.texts == ["echo:x", "echo:y"]
        rows = {(r.model, r.agent): r for r in client.costs.rows()}
        assert rows["m", "_none"].calls == 3


async def test_streaming_records_time_to_first_token(mock_server: ServerFactory) -> None:
    server = await mock_server(reply_tokens=5, latency=LatencyModel(base_ms=20, per_token_ms=2))
    async with ProviderClient("p", cfg(server), env={}) as client:
        reply = await client.chat(MSG, stream=True)
        assert reply.text == "echo:hello there tok0 tok1 tok2 tok3 tok4"
        assert reply.usage.completion_tokens == 5
        assert reply.ttft_s is not None and reply.ttft_s >= 0.02
        m = client.metrics.model("p", "m")
        assert m.ttft.count == 1
        assert m.inter_token.count == 4
        assert (await client.chat(MSG)).text == reply.text  # streamed and not, the same answer


# ---- errors and retries --------------------------------------------------------------------------------


async def test_retries_honour_retry_after(mock_server: ServerFactory) -> None:
    server = await mock_server(faults=Faults(burst_429=1, retry_after_s=0.3))
    async with ProviderClient("p", cfg(server), env={}) as client:
        t0 = time.perf_counter()
        reply = await client.chat(MSG)
        assert time.perf_counter() - t0 >= 0.3  # waited at least Retry-After, though the backoff is 0
        assert reply.text
        assert server.stats().requests == 2
        assert client.metrics.model("p", "m").retries == 1


async def test_5xx_retried_up_to_max_attempts(mock_server: ServerFactory) -> None:
    server = await mock_server(faults=Faults(error_rate=1.0))
    async with ProviderClient("p", cfg(server, retry={"max_attempts": 4}), env={}) as client:
        with pytest.raises(LLMUnavailableError, match="500"):
            await client.chat(MSG)
        assert server.stats().requests == 4


@pytest.mark.parametrize(
    ("server_kwargs", "error"),
    [({"faults": Faults(error_rate=1.0, error_status=400)}, LLMBadRequestError), ({"api_key": "k"}, LLMAuthError)],
)
async def test_no_retry_of_4xx(mock_server: ServerFactory, server_kwargs: dict[str, Any], error: type) -> None:
    server = await mock_server(**server_kwargs)
    async with ProviderClient("p", cfg(server, retry={"max_attempts": 5}), env={}) as client:
        with pytest.raises(error):
            await client.chat(MSG)
        assert server.stats().requests == 1


async def test_reset_is_unavailable_and_retried(mock_server: ServerFactory) -> None:
    server = await mock_server(faults=Faults(reset_rate=1.0))
    async with ProviderClient("p", cfg(server), env={}) as client:
        with pytest.raises(LLMUnavailableError, match="failed mid-request"):
            await client.chat(MSG)
        assert server.stats().requests == 3


async def test_one_deadline_for_all_attempts(mock_server: ServerFactory) -> None:
    server = await mock_server(faults=Faults(hang_rate=1.0))
    config = cfg(server, request_timeout_s=0.2, retry={"max_attempts": 10, "deadline_s": 0.5})
    async with ProviderClient("p", config, env={}) as client:
        t0 = time.perf_counter()
        with pytest.raises(LLMTimeoutError):
            await client.chat(MSG)
        elapsed = time.perf_counter() - t0
        # 10 attempts of 0.2 s would take 2 s; the shared deadline stops it after ~0.5 s (bound kept loose).
        assert elapsed < 1.5
        assert 2 <= server.stats().requests <= 3


async def test_per_call_timeout_overrides_the_deadline(mock_server: ServerFactory) -> None:
    server = await mock_server(faults=Faults(hang_rate=1.0))
    async with ProviderClient("p", cfg(server), env={}) as client:
        with pytest.raises(LLMTimeoutError, match="did not answer"):
            await client.chat(MSG, timeout_s=0.1)


async def test_the_shared_request_timer_times_out_each_request_after_its_own_timeout(
    mock_server: ServerFactory,
) -> None:
    # Requests with the full request_timeout_s share one timer (no aiohttp timer of their own): staggered
    # requests must each get their whole timeout, and the task must be left without a pending cancellation.
    server = await mock_server(faults=Faults(hang_rate=1.0))
    config = cfg(server, request_timeout_s=0.3, retry={"max_attempts": 1})
    async with ProviderClient("p", config, env={}) as client:

        async def one() -> float:
            t0 = time.perf_counter()
            with pytest.raises(LLMTimeoutError, match="did not answer within 0.3 s"):
                await client.chat(MSG)
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
            await asyncio.sleep(0)  # no cancellation left over for the next await
            return time.perf_counter() - t0

        tasks = []
        for _ in range(3):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(0.1)
        waits = await asyncio.gather(*tasks)
        assert all(w >= 0.3 for w in waits), waits  # never before its own deadline
        assert all(w < 1.5 for w in waits), waits  # and not unbounded (loose: a shared, noisy machine)
        assert len(client._pool.expiries) == 0


async def test_a_request_cancelled_from_outside_stays_cancelled(
    mock_server: ServerFactory, eventually: Eventually
) -> None:
    server = await mock_server(faults=Faults(hang_rate=1.0))
    async with ProviderClient("p", cfg(server, request_timeout_s=30.0), env={}) as client:
        task = asyncio.create_task(client.chat(MSG))
        await eventually(lambda: server.stats().requests == 1, what="the request at the server")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(client._pool.expiries) == 0

        # The timer and an outside cancellation at once: the outside one wins, as with asyncio.timeout.
        task = asyncio.create_task(client.chat(MSG))
        await eventually(lambda: server.stats().requests == 2, what="the second request at the server")
        (call,) = client._pool.expiries._waits
        client._pool.expiries._on_expire(call, None, 30.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_retry_budget_stops_retries(mock_server: ServerFactory, hubs: Callable[..., Awaitable[LLMHub]]) -> None:
    server = await mock_server(faults=Faults(error_rate=1.0))
    config = cfg(
        server,
        retry={"max_attempts": 5, "budget_ratio": 0.0, "budget_min_per_s": 0.0},
        breaker={"enabled": False},
    )
    hub = await hubs(config)
    for _ in range(3):
        with pytest.raises(LLMUnavailableError):
            await hub.client("p").chat(MSG)
    assert server.stats().requests == 3  # no retries at all: the budget allows none


async def test_connection_refused_is_unavailable(mock_server: ServerFactory) -> None:
    server = await mock_server()
    url = server.url
    await server.aclose()
    config = config_from_dict({"llm": {"p": {"base_url": url, "retry": {"max_attempts": 1}}}}).llm["p"]
    async with ProviderClient("p", config, env={}) as client:
        with pytest.raises(LLMUnavailableError, match="Cannot connect"):
            await client.chat(MSG)


async def test_response_size_limit(mock_server: ServerFactory) -> None:
    server = await mock_server(dimensions=512)
    async with ProviderClient("p", cfg(server, max_response_bytes=1000), env={}) as client:
        with pytest.raises(LLMBadRequestError, match="max_response_bytes"):
            await client.embed(["a"])


# ---- breakers ------------------------------------------------------------------------------------------


async def test_429_with_retry_after_opens_the_breaker(
    mock_server: ServerFactory, hubs: Callable[..., Awaitable[LLMHub]]
) -> None:
    server = await mock_server(faults=Faults(burst_429=1, retry_after_s=30))
    hub = await hubs(cfg(server, retry={"max_attempts": 1}))
    with pytest.raises(LLMRateLimitedError) as info:
        await hub.client("p").chat(MSG)
    assert info.value.retry_after_s == 30
    with pytest.raises(CircuitOpenError) as opened:
        await hub.client("p").chat(MSG)
    assert opened.value.retry_after_s is not None and opened.value.retry_after_s > 25
    assert server.stats().requests == 1  # the second call never reached the server
    # Another model of the same provider has its own breaker.
    assert (await hub.client("p").chat(MSG, model="other")).text


async def test_breaker_opens_on_5xx_but_not_on_4xx(
    mock_server: ServerFactory, hubs: Callable[..., Awaitable[LLMHub]]
) -> None:
    server = await mock_server(faults=Faults(error_rate=1.0, error_status=400))
    breaker = {"minimum_calls": 4, "window_size": 4, "open_wait_s": 60}
    hub = await hubs(cfg(server, retry={"max_attempts": 1}, breaker=breaker))
    for _ in range(8):
        with pytest.raises(LLMBadRequestError):
            await hub.client("p").chat(MSG)
    server.set_faults(Faults(error_rate=1.0, error_status=502))
    for _ in range(4):
        with pytest.raises(LLMUnavailableError):
            await hub.client("p").chat(MSG)
    with pytest.raises(CircuitOpenError):
        await hub.client("p").chat(MSG)
    assert server.stats().requests == 12


async def test_timeouts_count_against_the_breaker(
    mock_server: ServerFactory, hubs: Callable[..., Awaitable[LLMHub]]
) -> None:
    server = await mock_server(faults=Faults(hang_rate=1.0))
    config = cfg(server, request_timeout_s=0.05, retry={"max_attempts": 1}, breaker={"minimum_calls": 2})
    hub = await hubs(config)
    for _ in range(2):
        with pytest.raises(LLMTimeoutError):
            await hub.client("p").chat(MSG)
    with pytest.raises(CircuitOpenError):
        await hub.client("p").chat(MSG)


async def test_calls_refused_by_an_open_breaker_spend_no_rate_limit(
    mock_server: ServerFactory, hubs: Callable[..., Awaitable[LLMHub]]
) -> None:
    server = await mock_server()
    hub = await hubs(cfg(server, limits={"rpm": 2}))
    client = hub.client("p")
    assert client._breakers is not None
    breaker = client._breakers.get("p", "m")
    breaker.force_open()
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            await client.chat(MSG)
    breaker.reset()
    # Had the refused calls kept their rate-limit grants, these two would queue for a minute.
    await asyncio.wait_for(asyncio.gather(client.chat(MSG), client.chat(MSG)), 5)
    assert server.stats().requests == 2


# ---- rate limits and batching --------------------------------------------------------------------------


async def test_rate_limiter_queues_calls(mock_server: ServerFactory) -> None:
    server = await mock_server()
    limiters: list[RateLimiter] = []

    def limiter(model: str) -> RateLimiter:
        limiters.append(RateLimiter(rpm=3, name=model))
        return limiters[-1]

    async with ProviderClient("p", cfg(server), env={}, limiter_factory=limiter) as client:
        await asyncio.gather(*(client.chat(MSG) for _ in range(3)))
        waiting = asyncio.create_task(client.chat(MSG))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # over 3 per minute: it queues instead of failing
        assert limiters[0].statistics().queued == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert server.stats().requests == 3
    for lim in limiters:
        await lim.aclose()


async def test_concurrent_embeddings_are_batched(
    mock_server: ServerFactory, hubs: Callable[..., Awaitable[LLMHub]]
) -> None:
    server = await mock_server(latency=LatencyModel(base_ms=5))
    hub = await hubs(cfg(server, batching={"max_batch_size": 16, "max_wait_ms": 20}, cache={"enabled": False}))
    texts = [f"text {i}" for i in range(48)]
    results = await asyncio.gather(*(hub.client("p").embed(t) for t in texts))
    s = server.stats()
    assert s.items == 48
    assert s.requests <= 6  # 48 callers in batches of up to 16
    direct = MockLLMServer(dimensions=8)
    from agentflow.llm.mock import _vector

    assert [r.vectors[0] for r in results] == [_vector(t, direct.dimensions) for t in texts]
    comp = await asyncio.gather(*(hub.client("p").complete(f"p{i}") for i in range(16)))
    assert [c.texts for c in comp] == [[f"echo:p{i}"] for i in range(16)]
    assert server.stats().by_endpoint["completions"] < 16


async def test_a_failed_batch_fails_only_its_callers(
    mock_server: ServerFactory, hubs: Callable[..., Awaitable[LLMHub]]
) -> None:
    server = await mock_server(faults=Faults(burst_429=1, retry_after_s=60))
    hub = await hubs(cfg(server, retry={"max_attempts": 1}, batching={"max_wait_ms": 20}, breaker={"enabled": False}))
    first = await asyncio.gather(*(hub.client("p").embed(f"a{i}") for i in range(4)), return_exceptions=True)
    assert all(isinstance(r, LLMRateLimitedError) for r in first)
    second = await asyncio.gather(*(hub.client("p").embed(f"b{i}") for i in range(4)))
    assert all(len(r.vectors[0]) == 8 for r in second)


# ---- the pool ------------------------------------------------------------------------------------------


async def test_pool_limit_and_connection_reuse(mock_server: ServerFactory) -> None:
    server = await mock_server(latency=LatencyModel(base_ms=20))
    async with ProviderClient("p", cfg(server, max_connections=3), env={}) as client:
        await asyncio.gather(*(client.chat(MSG, timeout_s=30) for _ in range(30)))
        s = server.stats()
        assert s.max_in_flight <= 3
        assert s.connections_opened == 3  # never more than the pool, and reused for 30 requests
        for _ in range(20):
            await client.chat(MSG)
        assert server.stats().connections_opened == 3


async def test_min_connections_are_prewarmed(mock_server: ServerFactory) -> None:
    server = await mock_server()
    async with ProviderClient("p", cfg(server, min_connections=4), env={}) as client:
        assert server.stats().connections_opened == 4
        await asyncio.gather(*(client.chat(MSG) for _ in range(4)))
        assert server.stats().connections_opened == 4


async def test_max_connection_lifetime_replaces_the_pool(mock_server: ServerFactory) -> None:
    server = await mock_server()
    async with ProviderClient("p", cfg(server, max_connection_lifetime_s=0.1), env={}) as client:
        await client.chat(MSG)
        await asyncio.sleep(0.35)
        await client.chat(MSG)
        assert server.stats().connections_opened >= 2
    for _ in range(100):  # retired pools are closed
        if server.stats().connections_open == 0:
            break
        await asyncio.sleep(0.01)
    assert server.stats().connections_open == 0


# ---- cache ---------------------------------------------------------------------------------------------


async def test_cache_only_deterministic_requests_by_default(mock_server: ServerFactory) -> None:
    server = await mock_server()
    async with ProviderClient("p", cfg(server), env={}) as client:
        a = await client.chat(MSG, temperature=0)
        b = await client.chat(MSG, temperature=0)
        assert (a.cached, b.cached, b.text) == (False, True, a.text)
        await client.chat(MSG, temperature=0.7)
        await client.chat(MSG, temperature=0.7)
        await client.chat(MSG)  # temperature unset: the provider's default is not 0
        assert server.stats().requests == 4
        await client.embed(["x", "y"])
        hit = await client.embed(["y", "x"])
        assert hit.cached
        assert server.stats().by_endpoint["embeddings"] == 1
        assert client.cache is not None
        s = client.cache.statistics()
        assert (s.hits, s.hit_rate > 0) == (3, True)


# ---- secrets and providers -----------------------------------------------------------------------------


async def test_api_key_never_in_logs_reprs_or_errors(
    mock_server: ServerFactory, hubs: Callable[..., Awaitable[LLMHub]], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-very-secret-0123456789"
    caplog.set_level(logging.DEBUG)
    server = await mock_server(api_key=secret)
    hub = await hubs(cfg(server, api_key_env="MY_KEY"), env={"MY_KEY": secret}, metrics=Metrics())
    assert (await hub.client("p").chat(MSG)).text
    server.set_faults(Faults(error_rate=1.0))
    with pytest.raises(LLMUnavailableError) as info:
        await hub.client("p").chat(MSG)
    wrong = await mock_server(api_key="other")
    hub2 = await hubs(cfg(wrong, api_key_env="MY_KEY"), env={"MY_KEY": secret})
    with pytest.raises(LLMAuthError) as auth:
        await hub2.client("p").chat(MSG)
    assert "MY_KEY" in str(auth.value)
    texts = [
        caplog.text,
        repr(hub),
        repr(hub.client("p")),
        str(info.value),
        str(auth.value),
        repr(hub.client("p").config),
    ]
    assert all(secret not in t for t in texts)
    assert "MY_KEY" in repr(hub.client("p"))


async def test_missing_api_key_is_a_clear_error(mock_server: ServerFactory) -> None:
    server = await mock_server()
    client = ProviderClient("p", cfg(server, api_key_env="NOT_SET_ANYWHERE"), env={})
    with pytest.raises(LLMAuthError, match="NOT_SET_ANYWHERE .*is not set"):
        await client.start()
    await client.aclose()


async def test_azure_style(mock_server: ServerFactory) -> None:
    server = await mock_server(api_key="azure-key")
    config = cfg(
        server,
        api_style="azure",
        api_version="2024-06-01",
        api_key_env="AZ",
        base_url=server.root + "/openai/deployments/my-gpt",
    )
    async with ProviderClient("az", config, env={"AZ": "azure-key"}) as client:
        assert (await client.chat(MSG)).text
        assert client._urls["chat/completions"].endswith(
            "/openai/deployments/my-gpt/chat/completions?api-version=2024-06-01"
        )


async def test_requests_identify_agentflow_and_carry_json() -> None:
    from aiohttp import web

    from agentflow.llm.client import USER_AGENT

    seen: list[dict[str, str]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response(
            {
                "id": "c1",
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        config = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", default_model="m")
        async with ProviderClient("p", config) as client:
            assert (await client.chat(MSG)).text == "ok"
    finally:
        await runner.cleanup()
    [headers] = seen
    assert headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("agentflow/")
    assert headers["Content-Type"] == "application/json"
