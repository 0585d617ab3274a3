"""``ctx.llm.stream`` over real HTTP: text and tool-call deltas, the final answer, metrics, leaving early (the
connection is freed), failures before the first token (retried) and after it (raised, not retried)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from llm_servers import ScriptedLLM, drop, finish_chunk, send, sse_response, text_chunk

from agentflow import Context, Event, Runner, config_from_dict
from agentflow.config import LLMConfig
from agentflow.errors import (
    LLMBadRequestError,
    LLMStreamInterruptedError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from agentflow.llm.client import ProviderClient
from agentflow.llm.mock import Faults, LatencyModel, MockLLMServer
from agentflow.llm.types import StreamDelta

if TYPE_CHECKING:
    from conftest import Eventually

MSG = [{"role": "user", "content": "hello there"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def config(url: str, **over: Any) -> LLMConfig:
    retry = {"initial_backoff_s": 0.0, "jitter_s": 0.0, "max_backoff_s": 0.0, **over.pop("retry", {})}
    return config_from_dict({"llm": {"p": {"base_url": url, "default_model": "m", "retry": retry, **over}}}).llm["p"]


@pytest.fixture
async def mock() -> AsyncIterator[MockLLMServer]:
    async with MockLLMServer(reply_tokens=5) as server:
        yield server


async def collect(client: ProviderClient, messages: list[dict[str, Any]], **kwargs: Any) -> list[StreamDelta]:
    async with client.stream(messages, **kwargs) as stream:
        return [d async for d in stream]


async def test_text_deltas_then_the_whole_answer_with_usage_and_metrics(mock: MockLLMServer) -> None:
    async with ProviderClient("p", config(mock.url), env={}) as client:
        deltas = await collect(client, MSG)
        *texts, done = deltas
        assert [d.kind for d in texts] == ["text"] * 5 and done.kind == "done"
        assert [d.text for d in texts] == ["echo:hello there tok0", " tok1", " tok2", " tok3", " tok4"]
        reply = done.response
        assert reply is not None
        assert reply.text == "".join(d.text for d in texts) == (await client.chat(MSG)).text
        assert reply.text == (await client.chat(MSG, stream=True)).text  # one parser, the same answer
        assert reply.finish_reason == "stop" and reply.usage.completion_tokens == 5 and reply.ttft_s is not None
        m = client.metrics.model("p", "m")
        assert m.ttft.count == 2 and m.inter_token.count == 8  # this stream and chat(stream=True)
        assert m.outcomes["success"] == 3 and m.duration.count == 3
        [row] = client.costs.rows()
        assert (row.calls, row.completion_tokens) == (3, 15)
        assert client.in_flight == 0 and set(client._pool.in_use.values()) == {0}
        assert mock.stats().connections_opened == 1  # a finished stream gives its connection back for reuse


async def test_streamed_tool_calls_are_assembled_from_their_fragments(mock: MockLLMServer) -> None:
    ask = [{"role": "user", "content": 'go [[call get_weather {"city": "Paris", "days": 3}]] [[call get_time]]'}]
    async with ProviderClient("p", config(mock.url), env={}) as client:
        deltas = await collect(client, ask, tools=[WEATHER, TIME])
        assert [d.kind for d in deltas] == ["tool_call", "tool_call", "done"]
        first, second = (d.tool_call for d in deltas[:2])
        assert first is not None and second is not None
        assert (first.name, first.arguments) == ("get_weather", {"city": "Paris", "days": 3})
        assert (second.name, second.arguments, second.error) == ("get_time", {}, None)
        reply = deltas[-1].response
        assert reply is not None and reply.finish_reason == "tool_calls" and reply.message.content is None
        assert reply.tool_calls == [first, second] == (await client.chat(ask, tools=[WEATHER, TIME])).tool_calls
        assert client.metrics.model("p", "m").inter_token.count >= 6  # id+name, then arguments in fragments


async def test_ctx_llm_stream_in_an_agent(mock: MockLLMServer) -> None:
    runner = Runner(config_from_dict({"llm": {"mock": {"base_url": mock.url, "default_model": "m"}}}))

    @runner.agent("questions")
    async def answer(event: Event, ctx: Context) -> list[str]:
        async with ctx.llm.stream(MSG) as stream:
            return [d.text async for d in stream if d.kind == "text"]

    async with runner:
        assert await runner.request("questions", {}) == ["echo:hello there tok0", " tok1", " tok2", " tok3", " tok4"]
        assert runner.llm is not None
        [row] = runner.llm.costs.rows()
        assert (row.agent, row.calls) == ("answer", 1)


# ---- leaving early ----------------------------------------------------------------------------------------


async def _leave(client: ProviderClient, how: str) -> None:
    if how == "break":  # no async with: dropping the stream closes it
        async for _ in client.stream(MSG):
            break
    elif how == "break in async with":
        async with client.stream(MSG) as stream:
            async for _ in stream:
                break
    elif how == "exception":
        with pytest.raises(RuntimeError, match="agent failed"):
            async with client.stream(MSG) as stream:
                async for _ in stream:
                    raise RuntimeError("agent failed")
    elif how == "aclose":
        stream = client.stream(MSG)
        await stream.__anext__()
        await stream.aclose()
        await stream.aclose()  # idempotent
        assert [d async for d in stream] == []
    elif how == "cancel":
        started = asyncio.Event()

        async def consume() -> None:
            async with client.stream(MSG) as stream:
                async for _ in stream:
                    started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("how", ["break", "break in async with", "exception", "aclose", "cancel"])
async def test_leaving_a_stream_early_closes_it_and_frees_the_connection(how: str, eventually: Eventually) -> None:
    async with MockLLMServer(reply_tokens=200, latency=LatencyModel(per_token_ms=20)) as server:
        async with ProviderClient("p", config(server.url), env={}) as client:
            await _leave(client, how)
            # The client let go at once; the server sees the connection close and stops writing.
            assert client.in_flight == 0 and set(client._pool.in_use.values()) == {0}
            await eventually(lambda: server.stats().connections_open == 0, what="the server to see the close")
            await eventually(lambda: server.stats().in_flight == 0, what="the server's handler to stop")
            m = client.metrics.model("p", "m")
            assert m.outcomes["success"] == 1 and m.duration.count == 1  # the provider was fine
            [row] = client.costs.rows()
            assert row.completion_tokens >= 1  # what arrived is counted (estimated: no usage came)
            # The pool still works.
            assert (await client.chat(MSG, max_tokens=2)).text == "echo:hello there tok0 tok1"


# ---- failures ----------------------------------------------------------------------------------------------


async def test_a_stream_that_dies_after_its_first_tokens_raises_and_is_not_retried() -> None:
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        resp = await sse_response(request)
        await send(resp, text_chunk("one "), text_chunk("two "))
        await asyncio.sleep(0.05)
        return await drop(request)

    async with ScriptedLLM(handler) as server, ProviderClient("p", config(server.url), env={}) as client:
        got: list[str] = []
        with pytest.raises(LLMStreamInterruptedError, match="failed after 2 chunks") as info:
            async with client.stream(MSG) as stream:
                async for d in stream:
                    got.append(d.text)
        assert got == ["one ", "two "]
        assert isinstance(info.value.cause, LLMUnavailableError) and info.value.chunks == 2
        assert "not retried" in str(info.value)
        assert server.requests == 1  # not retried from the start
        m = client.metrics.model("p", "m")
        assert (m.outcomes["interrupted"], m.outcomes["success"], m.retries) == (1, 0, 0)
        assert client.in_flight == 0 and set(client._pool.in_use.values()) == {0}


async def test_a_stream_that_stalls_after_its_first_token_times_out_mid_stream() -> None:
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        resp = await sse_response(request)
        await send(resp, text_chunk("one "))
        await asyncio.sleep(10)
        return resp

    async with ScriptedLLM(handler) as server:
        async with ProviderClient("p", config(server.url, request_timeout_s=0.3), env={}) as client:
            with pytest.raises(LLMStreamInterruptedError) as info:
                async with client.stream(MSG) as stream:
                    async for _ in stream:
                        pass
            assert isinstance(info.value.cause, LLMTimeoutError)
            assert server.requests == 1


async def test_a_slow_consumer_is_not_timed_out() -> None:
    # request_timeout_s bounds each wait for the provider, not the time the agent spends between deltas.
    async with MockLLMServer(reply_tokens=3) as server:
        async with ProviderClient("p", config(server.url, request_timeout_s=0.2), env={}) as client:
            texts = []
            async with client.stream(MSG) as stream:
                async for d in stream:
                    await asyncio.sleep(0.15)
                    texts.append(d.text)
            assert "".join(texts) == "echo:hello there tok0 tok1 tok2"


async def test_failures_before_the_first_token_are_retried() -> None:
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        if n == 1:
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        resp = await sse_response(request)
        if n == 2:  # headers sent, then an error event before any token
            await send(resp, {"error": {"message": "The server had an error while processing your request."}})
            return resp
        if n == 3:  # headers sent, then the connection dies before any token
            return await drop(request)
        await send(resp, {"id": "s1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        await send(resp, text_chunk("fine"), finish_chunk(), "[DONE]")
        return resp

    async with ScriptedLLM(handler) as server:
        async with ProviderClient("p", config(server.url, retry={"max_attempts": 4}), env={}) as client:
            deltas = await collect(client, MSG)
            assert [d.text for d in deltas] == ["fine", ""]
            assert server.requests == 4
            m = client.metrics.model("p", "m")
            assert (m.retries, m.outcomes["unavailable"], m.outcomes["success"]) == (3, 3, 1)


async def test_deltas_that_arrived_with_the_failure_are_handed_out_before_it() -> None:
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        resp = await sse_response(request)
        await send(resp, text_chunk("one "))
        await asyncio.sleep(0.05)
        await send(resp, text_chunk("two "), text_chunk("three "), {"error": {"message": "overloaded"}})
        return resp

    async with ScriptedLLM(handler) as server, ProviderClient("p", config(server.url), env={}) as client:
        got: list[str] = []
        with pytest.raises(LLMStreamInterruptedError, match="overloaded"):
            async with client.stream(MSG) as stream:
                async for d in stream:
                    got.append(d.text)
        assert got == ["one ", "two ", "three "]
        assert server.requests == 1


async def test_a_failure_before_anything_was_handed_out_is_retried() -> None:
    # A token arrived, but the failure came in the same read, before the caller saw anything.
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        resp = await sse_response(request)
        if n == 1:
            await send(resp, text_chunk("one "), {"error": {"message": "overloaded"}})
            return resp
        await send(resp, text_chunk("fine"), finish_chunk(), "[DONE]")
        return resp

    async with ScriptedLLM(handler) as server, ProviderClient("p", config(server.url), env={}) as client:
        assert [d.text for d in await collect(client, MSG)] == ["fine", ""]
        assert server.requests == 2


async def test_an_error_event_after_the_first_token_interrupts_the_stream() -> None:
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        resp = await sse_response(request)
        await send(resp, text_chunk("one "))
        await asyncio.sleep(0.05)  # the first delta is handed out before the error comes
        await send(resp, {"error": {"message": "content filter triggered"}})
        return resp

    async with ScriptedLLM(handler) as server, ProviderClient("p", config(server.url), env={}) as client:
        with pytest.raises(LLMStreamInterruptedError, match="content filter triggered"):
            await collect(client, MSG)
        assert server.requests == 1


async def test_rate_limits_before_the_stream_go_through_the_pipeline() -> None:
    async with MockLLMServer(reply_tokens=2, faults=Faults(burst_429=1, retry_after_s=0.05)) as server:
        async with ProviderClient("p", config(server.url), env={}) as client:
            deltas = await collect(client, MSG)
            assert deltas[-1].response is not None and deltas[-1].response.text == "echo:hello there tok0 tok1"
            assert server.stats().requests == 2
            assert client.metrics.model("p", "m").outcomes["rate_limited"] == 1


async def test_the_joined_chat_stream_is_retried_whole_after_a_mid_stream_failure() -> None:
    # chat(stream=True) hands nothing out before the end, so starting again is safe and it does.
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        resp = await sse_response(request)
        await send(resp, text_chunk("one "))
        if n == 1:
            return await drop(request)
        await send(resp, text_chunk("two"), finish_chunk(), "[DONE]")
        return resp

    async with ScriptedLLM(handler) as server, ProviderClient("p", config(server.url), env={}) as client:
        assert (await client.chat(MSG, stream=True)).text == "one two"
        assert server.requests == 2


async def test_a_stream_over_max_response_bytes_is_interrupted() -> None:
    async with MockLLMServer(reply_tokens=500, latency=LatencyModel(per_token_ms=1)) as server:
        async with ProviderClient("p", config(server.url, max_response_bytes=2000), env={}) as client:
            with pytest.raises(LLMStreamInterruptedError) as info:
                await collect(client, MSG)
            assert isinstance(info.value.cause, LLMBadRequestError)
            assert "max_response_bytes" in str(info.value)


# ---- what OpenAI-compatible servers send -----------------------------------------------------------------


async def test_object_arguments_and_calls_without_an_index_are_assembled() -> None:
    # Some servers (Ollama) send each tool call whole, arguments as a JSON object, and no index.
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        resp = await sse_response(request)
        calls = [
            {"id": "a", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
            {"id": "b", "function": {"name": "get_time", "arguments": {}}},
        ]
        for call in calls:
            await send(resp, {"id": "s", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
        await send(resp, finish_chunk("tool_calls"), "[DONE]")
        return resp

    async with ScriptedLLM(handler) as server, ProviderClient("p", config(server.url), env={}) as client:
        deltas = await collect(client, MSG, tools=[WEATHER, TIME])
        calls = [d.tool_call for d in deltas if d.tool_call is not None]
        assert [(c.id, c.name, c.arguments) for c in calls] == [
            ("a", "get_weather", {"city": "Oslo"}),
            ("b", "get_time", {}),
        ]
        reply = deltas[-1].response
        assert reply is not None and reply.usage.completion_tokens == 9  # no usage sent: 36 characters, ~4 a token
        # Sent back, the arguments are a JSON string, as OpenAI requires.
        call = reply.message.tool_calls[0]  # type: ignore[index]
        assert call.function.arguments == '{"city":"Oslo"}' and call.type == "function"


async def test_interleaved_fragments_still_give_a_complete_final_answer(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        resp = await sse_response(request)

        def frag(i: int, **f: Any) -> dict[str, Any]:
            return {"id": "s", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, **f}]}}]}

        await send(
            resp,
            frag(0, id="a", function={"name": "get_weather", "arguments": '{"city":'}),
            frag(1, id="b", function={"name": "get_time", "arguments": "{}"}),
            frag(0, function={"arguments": ' "Rome"}'}),
            finish_chunk("tool_calls"),
            "[DONE]",
        )
        return resp

    async with ScriptedLLM(handler) as server, ProviderClient("p", config(server.url), env={}) as client:
        with caplog.at_level(logging.WARNING):
            deltas = await collect(client, MSG, tools=[WEATHER, TIME])
        assert "interleaved the fragments" in caplog.text
        reply = deltas[-1].response
        assert reply is not None
        assert [(c.name, c.arguments) for c in reply.tool_calls] == [
            ("get_weather", {"city": "Rome"}),
            ("get_time", {}),
        ]


async def test_a_stream_with_several_choices(mock: MockLLMServer) -> None:
    async with ProviderClient("p", config(mock.url), env={}) as client:
        deltas = await collect(client, MSG, extra={"n": 2})
        by_choice: dict[int, str] = {0: "", 1: ""}
        for d in deltas:
            by_choice[d.choice] += d.text
        assert by_choice[0] == by_choice[1] == "echo:hello there tok0 tok1 tok2 tok3 tok4"
        reply = deltas[-1].response
        assert reply is not None and [c.index for c in reply.choices] == [0, 1]
