"""Tool calling through the LLM client over real HTTP: tool calls come back decoded, tool results go back as
``role: "tool"`` messages, malformed arguments are reported (never a crash), the request fields are checked
before anything is sent, and the mock LLM's directives (``[[call ...]]``, ``[[loop ...]]``)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from llm_servers import ScriptedLLM, chat_json

from agentflow import ChatMessage, Context, Event, Runner, ToolCall, config_from_dict
from agentflow.config import LLMConfig
from agentflow.errors import LLMBadRequestError
from agentflow.llm.client import ProviderClient
from agentflow.llm.hub import LLMHub
from agentflow.llm.mock import MockLLMServer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The forecast for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def config(url: str) -> LLMConfig:
    return LLMConfig(base_url=url, default_model="m")


@pytest.fixture
async def client() -> AsyncIterator[tuple[MockLLMServer, ProviderClient]]:
    async with MockLLMServer() as server, ProviderClient("p", config(server.url), env={}) as c:
        yield server, c


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def test_a_tool_call_round_trip(client: tuple[MockLLMServer, ProviderClient]) -> None:
    server, c = client
    messages: list[Any] = [user('What is the weather? [[call get_weather {"city": "Paris"}]]')]
    reply = await c.chat(messages, tools=[WEATHER])
    assert reply.finish_reason == "tool_calls" and reply.text == ""
    [call] = reply.tool_calls
    assert call == ToolCall(
        id="call_1_0", name="get_weather", arguments={"city": "Paris"}, arguments_raw='{"city": "Paris"}'
    )
    messages.append(reply.message)  # the assistant message, with its tool_calls, goes back as it came
    messages.append(call.result(json.dumps({"forecast": "sunny", "c": 21})))
    final = await c.chat(messages, tools=[WEATHER])
    assert final.finish_reason == "stop" and final.tool_calls == []
    assert final.text == 'tool results: get_weather: {"forecast": "sunny", "c": 21}'
    assert server.stats().tool_calls == 1


async def test_parallel_tool_calls_and_turning_them_off(client: tuple[MockLLMServer, ProviderClient]) -> None:
    _, c = client
    ask = [user('Both. [[call get_weather {"city": "Oslo"}]] and [[call get_time]]')]
    reply = await c.chat(ask, tools=[WEATHER, TIME])
    assert [(t.id, t.name, t.arguments) for t in reply.tool_calls] == [
        ("call_1_0", "get_weather", {"city": "Oslo"}),
        ("call_1_1", "get_time", {}),
    ]
    one = await c.chat(ask, tools=[WEATHER, TIME], parallel_tool_calls=False)
    assert [t.name for t in one.tool_calls] == ["get_weather"]
    # Results of parallel calls are quoted in the order of the tool messages.
    messages: list[Any] = [*ask, reply.message, *(t.result(f"result of {t.name}") for t in reply.tool_calls)]
    final = await c.chat(messages, tools=[WEATHER, TIME])
    assert final.text == "tool results: get_weather: result of get_weather; get_time: result of get_time"


async def test_undecodable_arguments_are_kept_raw_and_reported(
    client: tuple[MockLLMServer, ProviderClient], caplog: pytest.LogCaptureFixture
) -> None:
    _, c = client
    ask = [user('[[call get_weather {"city": "Par]] [[call get_time [1, 2]]] [[call get_weather {"city": "Rome"}]]')]
    with caplog.at_level(logging.WARNING, logger="agentflow.llm.client"):
        reply = await c.chat(ask, tools=[WEATHER, TIME])
    bad, listed, good = reply.tool_calls
    assert (bad.arguments, bad.arguments_raw) == (None, '{"city": "Par')
    assert bad.error is not None and "not valid JSON" in bad.error and "'get_weather'" in bad.error
    assert listed.arguments is None and listed.error is not None and "JSON array, not an object" in listed.error
    assert good.arguments == {"city": "Rome"} and good.error is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("arguments that are not a JSON object" in w for w in warnings)
    assert not any("Par" in w for w in warnings)  # named, not quoted: arguments may hold user data


async def test_doom_loop_directive_asks_for_the_same_call_every_turn(
    client: tuple[MockLLMServer, ProviderClient],
) -> None:
    _, c = client
    messages: list[Any] = [user('Search. [[loop search {"q": "agentflow"}]]')]
    seen = []
    for _ in range(4):
        reply = await c.chat(messages, tools=[{"type": "function", "function": {"name": "search"}}])
        [call] = reply.tool_calls
        seen.append((call.id, call.name, call.arguments))
        messages += [reply.message, call.result("nothing new")]
    assert [s[1:] for s in seen] == [("search", {"q": "agentflow"})] * 4
    assert len({s[0] for s in seen}) == 4  # fresh ids every turn, as a model would send


async def test_loop_directives_rotate_and_may_number_their_turns(client: tuple[MockLLMServer, ProviderClient]) -> None:
    _, c = client
    messages: list[Any] = [user('Go. [[loop a {"x": 1}]] [[loop b {"page": $turn}]]')]
    turns = []
    for _ in range(3):
        reply = await c.chat(messages, tools=[{"type": "function", "function": {"name": n}} for n in "ab"])
        turns.append([(call.name, call.arguments) for call in reply.tool_calls])
        messages += [reply.message, *(call.result("ok") for call in reply.tool_calls)]
    assert turns == [
        [("a", {"x": 1}), ("b", {"page": 1})],
        [("b", {"page": 2}), ("a", {"x": 1})],
        [("a", {"x": 1}), ("b", {"page": 3})],
    ]


async def test_tool_choice(client: tuple[MockLLMServer, ProviderClient]) -> None:
    _, c = client
    ask = [user("[[call get_weather {}]]")]
    assert (await c.chat(ask, tools=[WEATHER], tool_choice="none")).text.startswith("echo:")
    plain = [user("hello")]
    assert (await c.chat(plain, tools=[WEATHER])).text.startswith("echo:hello")
    [forced] = (await c.chat(plain, tools=[WEATHER, TIME], tool_choice="required")).tool_calls
    assert (forced.name, forced.arguments) == ("get_weather", {})
    [named] = (await c.chat(plain, tools=[WEATHER, TIME], tool_choice="get_time")).tool_calls
    assert named.name == "get_time"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tools": WEATHER}, "tools must be a list"),
        ({"tools": ["get_weather"]}, "tools[0] is a str"),
        ({"tools": [{"type": "retrieval"}]}, 'only "function" tools'),
        ({"tools": [{"type": "function", "function": {}}]}, "non-empty name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}, "JSON Schema object"),
        ({"tools": [WEATHER, WEATHER]}, "get_weather appear more than once"),
        ({"tool_choice": "auto"}, "need tools"),
        ({"tools": [WEATHER], "tool_choice": "get_time"}, "nor the name of a tool"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "one of the tools"),
        ({"tools": [], "tool_choice": "required"}, "needs at least one tool"),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "True or False"),
    ],
)
async def test_bad_tool_arguments_are_refused_before_sending(
    client: tuple[MockLLMServer, ProviderClient], kwargs: dict[str, Any], message: str
) -> None:
    server, c = client
    with pytest.raises(LLMBadRequestError, match=message.replace("[", r"\[")):
        await c.chat([user("hi")], **kwargs)
    with pytest.raises(LLMBadRequestError, match=message.replace("[", r"\[")):
        c.stream([user("hi")], **kwargs)
    assert server.stats().requests == 0


async def test_an_agent_without_tools_sends_no_tool_fields() -> None:
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        return chat_json({"role": "assistant", "content": "ok"})

    async with ScriptedLLM(handler) as server, ProviderClient("p", config(server.url)) as c:
        await c.chat([user("hi")], tools=[], tool_choice="auto")  # OpenAI refuses "tools": []
        await c.chat([user("hi")], tools=[WEATHER], tool_choice="get_weather", parallel_tool_calls=False)
    assert set(server.bodies[0]) == {"model", "messages"}
    assert server.bodies[1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert server.bodies[1]["parallel_tool_calls"] is False and server.bodies[1]["tools"] == [WEATHER]


async def test_object_arguments_from_vllm_style_servers_are_accepted_and_sent_back_as_strings() -> None:
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        if n == 1:
            call = {"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lima"}}}
            return chat_json({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")
        return chat_json({"role": "assistant", "content": "done"})

    async with ScriptedLLM(handler) as server, ProviderClient("p", config(server.url)) as c:
        messages: list[Any] = [user("weather in Lima")]
        reply = await c.chat(messages, tools=[WEATHER])
        [call] = reply.tool_calls
        assert (call.id, call.arguments, call.error) == ("c9", {"city": "Lima"}, None)
        messages += [reply.message, call.result("warm")]
        assert (await c.chat(messages, tools=[WEATHER])).text == "done"
    sent = server.bodies[1]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "tool_calls": [
            {"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Lima"}'}}
        ],
    }
    assert sent[2] == {"role": "tool", "content": "warm", "tool_call_id": "c9"}


async def test_chat_message_structs_round_trip_tool_calls(client: tuple[MockLLMServer, ProviderClient]) -> None:
    _, c = client
    reply = await c.chat([ChatMessage(role="user", content='[[call get_time {"tz": "UTC"}]]')], tools=[TIME])
    [call] = reply.tool_calls
    again = await c.chat(
        [ChatMessage(role="user", content="x"), reply.message, call.result("12:00")], tools=[TIME], temperature=0
    )
    assert again.text == "tool results: get_time: 12:00"


async def test_ctx_llm_tool_calls_in_an_agent() -> None:
    async with MockLLMServer() as server:
        runner = Runner(config_from_dict({"llm": {"mock": {"base_url": server.url, "default_model": "m"}}}))

        @runner.agent("questions")
        async def answer(event: Event, ctx: Context) -> str:
            messages: list[Any] = [user(event.payload["q"])]
            reply = await ctx.llm.chat(messages, tools=[WEATHER])
            messages.append(reply.message)
            for call in reply.tool_calls:
                assert call.arguments is not None
                messages.append(call.result(f"{call.arguments['city']}: rain"))
            return (await ctx.llm.chat(messages, tools=[WEATHER])).text

        async with runner:
            q = 'Weather? [[call get_weather {"city": "Bergen"}]]'
            assert await runner.request("questions", {"q": q}) == "tool results: get_weather: Bergen: rain"


async def test_the_hub_passes_tool_arguments_through() -> None:
    async with MockLLMServer() as server, LLMHub({"p": config(server.url)}, env={}) as hub:
        llm = hub.for_agent("a", "wf-1")
        reply = await llm.chat([user("[[call get_time]]")], tools=[TIME])
        assert [t.name for t in reply.tool_calls] == ["get_time"]
        assert hub.costs.used("wf-1") > 0


async def test_stream_sends_the_body_chat_sends_with_stream_true() -> None:
    # stream() builds its request body apart from chat() (chat's path is kept free of extra calls): same body.
    async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "delta": {"content": "ok"}}]}\n\ndata: [DONE]\n\n')
        return resp

    kwargs: dict[str, Any] = {
        "model": "x",
        "temperature": 0.5,
        "max_tokens": 9,
        "tools": [WEATHER, TIME],
        "tool_choice": "get_time",
        "parallel_tool_calls": False,
        "extra": {"seed": 3},
    }
    async with ScriptedLLM(handler) as server, ProviderClient("p", config(server.url)) as c:
        assert (await c.chat([user("hi")], stream=True, **kwargs)).text == "ok"
        async with c.stream([user("hi")], **kwargs) as stream:
            assert [d.text async for d in stream] == ["ok", ""]
    joined, streamed = server.bodies
    assert joined == streamed and joined["stream"] is True and joined["tool_choice"]["function"]["name"] == "get_time"
