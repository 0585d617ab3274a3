"""The mock LLM server over real HTTP: endpoints, latency model, capacity, every fault kind, /stats, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from agentflow.llm.mock import Faults, LatencyModel, MockLLMServer

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_binds_loopback_by_default_and_serves_chat(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer() as server:
        assert server.url.startswith("http://127.0.0.1:")
        async with http.post(server.url + "/chat/completions", json=CHAT) as resp:
            body = await resp.json()
        assert resp.status == 200
        assert body["choices"][0]["message"]["content"].startswith("echo:hello there")
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}
        assert server.stats().by_endpoint == {"chat": 1}


async def test_streaming_sends_one_event_per_token_then_usage_and_done(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(reply_tokens=4) as server:
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(server.url + "/chat/completions", json=body) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            text = await resp.text()
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert sum('"content":"' in e and "tok" in e for e in events) == 4  # "echo:hello there tok0", " tok1", ...
    assert '"usage":{"prompt_tokens":3,"completion_tokens":4' in events[-2]
    assert server.stats().streams == 1


async def test_embeddings_take_a_list_and_dimensions(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(dimensions=16) as server:
        async with http.post(server.url + "/embeddings", json={"model": "e", "input": ["a", "b", "a"]}) as resp:
            body = await resp.json()
        vecs = [d["embedding"] for d in body["data"]]
        assert [len(v) for v in vecs] == [16, 16, 16]
        assert vecs[0] == vecs[2] != vecs[1]  # deterministic per text
        async with http.post(server.url + "/embeddings", json={"model": "e", "input": "x", "dimensions": 1536}) as r:
            assert len((await r.json())["data"][0]["embedding"]) == 1536
        s = server.stats()
        assert (s.requests, s.items, s.batch_sizes) == (2, 4, {"3": 1, "1": 1})


async def test_completions_take_a_list_of_prompts(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer() as server:
        async with http.post(server.url + "/completions", json={"model": "c", "prompt": ["p1", "p2"]}) as resp:
            body = await resp.json()
    assert [c["text"] for c in body["choices"]] == ["echo:p1", "echo:p2"]


async def test_an_answer_cut_by_max_tokens_finishes_with_length(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(reply_tokens=8) as server:
        finishes = []
        for extra in ({"max_tokens": 3}, {"max_tokens": 8}, {}):
            async with http.post(server.url + "/chat/completions", json={**CHAT, **extra}) as resp:
                finishes.append((await resp.json())["choices"][0]["finish_reason"])
        streamed = {**CHAT, "max_tokens": 2, "stream": True}
        async with http.post(server.url + "/chat/completions", json=streamed) as resp:
            text = await resp.text()
        prompts = {"model": "c", "prompt": ["p1", "p2"], "max_tokens": 2}
        async with http.post(server.url + "/completions", json=prompts) as resp:
            completions = [c["finish_reason"] for c in (await resp.json())["choices"]]
        async with http.post(server.url + "/completions", json={**prompts, "stream": True}) as resp:
            streamed_completions = await resp.text()
    assert finishes == ["length", "stop", "stop"]
    assert '"finish_reason":"length"' in text and '"finish_reason":"stop"' not in text
    assert completions == ["length", "length"]
    assert streamed_completions.count('"finish_reason":"length"') == 2


async def test_latency_model_base_per_token_and_per_item() -> None:
    fixed = MockLLMServer(latency=LatencyModel(base_ms=10, per_token_ms=2, per_item_ms=1))
    assert fixed._delay_s(tokens=5, items=3) == pytest.approx(0.023)
    a = MockLLMServer(latency=LatencyModel(base_ms=10, distribution="lognormal", seed=7))
    b = MockLLMServer(latency=LatencyModel(base_ms=10, distribution="lognormal", seed=7))
    draws = [a._delay_s(0, 1) for _ in range(200)]
    assert draws == [b._delay_s(0, 1) for _ in range(200)]  # the seed makes it repeatable
    assert len(set(draws)) > 100 and min(draws) > 0
    expo = MockLLMServer(latency=LatencyModel(base_ms=10, distribution="exponential", seed=1))
    mean = sum(expo._delay_s(0, 0) for _ in range(4000)) / 4000
    assert 0.008 < mean < 0.012  # mean factor 1


async def test_capacity_queues_excess_requests(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(capacity=2, latency=LatencyModel(base_ms=50)) as server:

        async def one() -> int:
            async with http.post(server.url + "/chat/completions", json=CHAT) as resp:
                return resp.status

        assert await asyncio.gather(*(one() for _ in range(6))) == [200] * 6
        s = server.stats()
        assert s.max_in_flight == 2
        assert s.max_queued >= 3


async def test_error_and_429_faults(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(faults=Faults(error_rate=1.0, error_status=503)) as server:
        async with http.post(server.url + "/chat/completions", json=CHAT) as resp:
            assert resp.status == 503
        server.set_faults(Faults(rate_limit_rate=1.0, retry_after_s=2.5))
        async with http.post(server.url + "/chat/completions", json=CHAT) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "2.5"
            assert resp.headers["retry-after-ms"] == "2500"
        assert server.stats().faults == {"error": 1, "rate_limited": 1}


async def test_burst_429_hits_exactly_the_next_n(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(faults=Faults(burst_429=3)) as server:
        statuses = []
        for _ in range(5):
            async with http.post(server.url + "/chat/completions", json=CHAT) as resp:
                statuses.append(resp.status)
        assert statuses == [429, 429, 429, 200, 200]


async def test_reset_drops_the_connection(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(faults=Faults(reset_rate=1.0)) as server:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with http.post(server.url + "/chat/completions", json=CHAT) as resp:
                await resp.read()
        assert server.stats().faults == {"reset": 1}


async def test_hang_lasts_until_the_client_gives_up(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(faults=Faults(hang_rate=1.0)) as server:
        with pytest.raises(TimeoutError):
            async with http.post(
                server.url + "/chat/completions", json=CHAT, timeout=aiohttp.ClientTimeout(total=0.2)
            ) as resp:
                await resp.read()
        for _ in range(100):  # the server notices the disconnect and the hung handler ends
            if server.stats().in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert server.stats().in_flight == 0


async def test_slow_calls_add_slow_ms(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(faults=Faults(slow_rate=1.0, slow_ms=150)) as server:
        t0 = time.perf_counter()
        async with http.post(server.url + "/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
        assert time.perf_counter() - t0 >= 0.15  # a lower bound only: never an upper bound on a shared machine
        assert server.stats().faults == {"slow": 1}


async def test_faults_change_at_run_time_over_http(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer() as server:
        async with http.post(server.root + "/admin/faults", json={"error_rate": 1.0}) as resp:
            assert resp.status == 200
        async with http.post(server.url + "/chat/completions", json=CHAT) as resp:
            assert resp.status == 500
        async with http.post(server.root + "/admin/faults", json={"error_rate": 0.7, "reset_rate": 0.7}) as resp:
            assert resp.status == 400
            assert "add up to at most 1" in (await resp.json())["error"]["message"]
        async with http.post(server.root + "/admin/faults", json={"nope": 1}) as resp:
            assert resp.status == 400
        async with http.post(server.root + "/admin/reset") as resp:
            assert resp.status == 200
        async with http.get(server.root + "/stats") as resp:
            assert (await resp.json())["requests"] == 0


async def test_stats_count_connections_opened(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer() as server:
        for _ in range(5):  # one keep-alive connection, reused
            async with http.post(server.url + "/chat/completions", json=CHAT) as resp:
                await resp.read()
        assert server.stats().connections_opened == 1
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            for _ in range(3):
                async with fresh.post(server.url + "/chat/completions", json=CHAT) as resp:
                    await resp.read()
        assert server.stats().connections_opened == 4


async def test_request_limits(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(max_request_bytes=10_000, max_items=4) as server:
        async with http.post(server.url + "/embeddings", data=b"x" * 20_000) as resp:
            assert resp.status == 413
        async with http.post(server.url + "/embeddings", json={"model": "e", "input": ["a"] * 5}) as resp:
            assert resp.status == 400
            assert "At most 4 inputs" in (await resp.json())["error"]["message"]
        async with http.post(server.url + "/chat/completions", data=b"{not json") as resp:
            assert resp.status == 400
        assert server.stats().rejected == {"too_many_items": 1, "invalid": 1}


async def test_api_key_is_checked_when_set(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer(api_key="sk-test") as server:
        async with http.post(server.url + "/chat/completions", json=CHAT) as resp:
            assert resp.status == 401
        headers = {"Authorization": "Bearer sk-test"}
        async with http.post(server.url + "/chat/completions", json=CHAT, headers=headers) as resp:
            assert resp.status == 200


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="add up to at most 1"):
        MockLLMServer(faults=Faults(error_rate=0.6, hang_rate=0.6))
    with pytest.raises(ValueError, match="capacity"):
        MockLLMServer(capacity=0)


# ---- tool calls ---------------------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]


async def _tool_calls(http: aiohttp.ClientSession, url: str, content: str) -> list[tuple[str, str]]:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "tools": TOOLS}
    async with http.post(url + "/chat/completions", json=body) as resp:
        message = (await resp.json())["choices"][0]["message"]
    return [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]


async def test_directives(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer() as server:
        url = server.url
        assert await _tool_calls(http, url, '[[call f {"a": "]]"}]] [[call g]]') == [("f", '{"a": "]]"}'), ("g", "{}")]
        assert await _tool_calls(http, url, "[[call f {broken]]") == [("f", "{broken")]  # sent as written
        assert await _tool_calls(http, url, "[[call f {} no end") == []  # unclosed: plain text
        assert await _tool_calls(http, url, "no directive") == []
        # Without tools in the request, a directive is only text.
        async with http.post(
            url + "/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "[[call f]]"}]}
        ) as r:
            assert (await r.json())["choices"][0]["message"]["content"].startswith("echo:[[call f]]")


async def test_streamed_tool_calls_come_in_fragments_like_openais(http: aiohttp.ClientSession) -> None:
    async with MockLLMServer() as server:
        content = '[[call f {"city": "Paris", "days": 10}]] [[call g {"x": 1}]]'
        body = {"model": "m", "messages": [{"role": "user", "content": content}], "tools": TOOLS, "stream": True}
        async with http.post(server.url + "/chat/completions", json=body) as resp:
            text = await resp.text()
    events = [msgspec.json.decode(line[6:]) for line in text.split("\n") if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas[0] == {"role": "assistant", "content": None}
    frags = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    # Per call: the id, type and name first with empty arguments, then the arguments in three pieces.
    assert [sorted(f) for f in frags] == [["function", "id", "index", "type"], *[["function", "index"]] * 3] * 2
    assert frags[0]["function"] == {"name": "f", "arguments": ""}
    assert "".join(f["function"]["arguments"] for f in frags[1:4]) == '{"city": "Paris", "days": 10}'
    assert [f["index"] for f in frags] == [0] * 4 + [1] * 4
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
