"""The official openai SDK against the mock LLM (the server ``agentcli mock-llm`` runs), on every endpoint it
serves, streamed and not: what the SDK parses must be what a real provider would have sent."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from agentflow.llm.mock import MODEL_CREATED, Faults, MockLLMServer

MSG: list[Any] = [{"role": "user", "content": "hello there"}]
TEXT = "echo:hello there tok0 tok1 tok2 tok3"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ASK_TOOLS: list[Any] = [
    {"role": "user", "content": 'Go [[call get_weather {"city": "Paris", "days": 2}]] [[call get_time]]'}
]


@pytest.fixture
async def server() -> AsyncIterator[MockLLMServer]:
    async with MockLLMServer(reply_tokens=4, dimensions=8) as s:
        yield s


@pytest.fixture
async def sdk(server: MockLLMServer) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=server.url, api_key="sk-test", max_retries=0)
    yield client
    await client.close()


# ---- chat ------------------------------------------------------------------------------------------------


async def test_chat(sdk: AsyncOpenAI) -> None:
    resp = await sdk.chat.completions.create(model="m", messages=MSG, n=3)
    assert resp.object == "chat.completion" and abs(resp.created - time.time()) < 60 and resp.model == "m"
    assert [c.index for c in resp.choices] == [0, 1, 2]
    for choice in resp.choices:
        assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", TEXT, "stop")
    assert resp.usage is not None and resp.usage.completion_tokens == 12 and resp.usage.total_tokens == 15


@pytest.mark.parametrize("include_usage", [True, False])
async def test_chat_streamed(sdk: AsyncOpenAI, include_usage: bool) -> None:
    stream = await sdk.chat.completions.create(
        model="m", messages=MSG, n=2, stream=True, stream_options={"include_usage": include_usage}
    )
    texts = {0: "", 1: ""}
    roles: dict[int, list[str | None]] = {0: [], 1: []}
    usage = []
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.created > 0 and chunk.id and chunk.model == "m"
        if chunk.usage is not None:
            usage.append(chunk.usage)
        for choice in chunk.choices:
            roles[choice.index].append(choice.delta.role)
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: TEXT, 1: TEXT}  # the non-streamed answer
    for r in roles.values():
        assert r[0] == "assistant" and set(r[1:]) == {None}  # the role comes first, once
    if include_usage:
        [u] = usage
        assert (u.prompt_tokens, u.completion_tokens) == (3, 8)
    else:
        assert usage == []


async def test_chat_through_the_sdks_stream_helper(sdk: AsyncOpenAI) -> None:
    async with sdk.chat.completions.stream(model="m", messages=MSG) as stream:
        deltas = [e.delta async for e in stream if e.type == "content.delta"]
        final = await stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content == TEXT
    assert final.choices[0].finish_reason == "stop"


async def test_tool_calls(sdk: AsyncOpenAI) -> None:
    resp = await sdk.chat.completions.create(model="m", messages=ASK_TOOLS, tools=[WEATHER, TIME])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    got = [(c.id, c.type, c.function.name, json.loads(c.function.arguments)) for c in calls]  # type: ignore[union-attr]
    assert got == [
        ("call_1_0", "function", "get_weather", {"city": "Paris", "days": 2}),
        ("call_1_1", "function", "get_time", {}),
    ]
    # The SDK's own message types go back as they are, with one tool message per call.
    messages: list[Any] = [*ASK_TOOLS, choice.message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": f"ok {i}"} for i, c in enumerate(calls)]
    final = await sdk.chat.completions.create(model="m", messages=messages, tools=[WEATHER, TIME])
    assert final.choices[0].message.content == "tool results: get_weather: ok 0; get_time: ok 1"


async def test_tool_calls_streamed_through_the_sdks_accumulation(sdk: AsyncOpenAI) -> None:
    async with sdk.chat.completions.stream(model="m", messages=ASK_TOOLS[:1], tools=[WEATHER]) as stream:
        events = [e async for e in stream]
        final = await stream.get_final_completion()
    fragments = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert len(fragments) >= 6  # each call's arguments arrive in pieces, as from OpenAI
    assert [(e.name, e.arguments) for e in done] == [
        ("get_weather", '{"city": "Paris", "days": 2}'),
        ("get_time", "{}"),
    ]
    # The accumulated answer equals the non-streamed one.
    message = final.choices[0].message
    plain = (await sdk.chat.completions.create(model="m", messages=ASK_TOOLS, tools=[WEATHER, TIME])).choices[0]
    assert final.choices[0].finish_reason == plain.finish_reason == "tool_calls"
    assert [
        c.model_dump(exclude={"index": True, "function": {"parsed_arguments"}}) for c in message.tool_calls or []
    ] == [c.model_dump() for c in plain.message.tool_calls or []]
    assert message.tool_calls is not None and message.tool_calls[0].function.parsed_arguments == {
        "city": "Paris",
        "days": 2,
    }


# ---- completions -----------------------------------------------------------------------------------------


async def test_completions_plain_and_streamed(sdk: AsyncOpenAI) -> None:
    plain = await sdk.completions.create(model="c", prompt=["first prompt", "second"])
    assert plain.object == "text_completion" and plain.created > 0
    assert [c.text for c in plain.choices] == ["echo:first prompt", "echo:second"]
    stream = await sdk.completions.create(
        model="c", prompt=["first prompt", "second"], stream=True, stream_options={"include_usage": True}
    )
    texts = {0: "", 1: ""}
    finished = []
    chunks = 0
    usage = None
    async for chunk in stream:
        chunks += 1
        assert chunk.object == "text_completion"
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finished.append(choice.index)
    assert chunks > 3 and [texts[0], texts[1]] == [c.text for c in plain.choices]
    assert sorted(finished) == [0, 1]
    assert usage is not None and plain.usage is not None and usage.total_tokens == plain.usage.total_tokens


# ---- embeddings ------------------------------------------------------------------------------------------


async def test_embeddings_base64_by_default_and_float(sdk: AsyncOpenAI) -> None:
    default = await sdk.embeddings.create(model="e", input=["a", "b"])  # the SDK asks for base64
    floats = await sdk.embeddings.create(model="e", input=["a", "b"], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    for a, b in zip(default.data, floats.data, strict=True):
        assert len(a.embedding) == 8 and a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens == 2


async def test_embeddings_of_token_ids(sdk: AsyncOpenAI) -> None:
    one = await sdk.embeddings.create(model="e", input=[101, 102, 103])
    assert len(one.data) == 1 and one.usage.prompt_tokens == 3
    several = await sdk.embeddings.create(model="e", input=[[101, 102, 103], [7]], encoding_format="float")
    assert len(several.data) == 2 and several.usage.prompt_tokens == 4
    assert one.data[0].embedding == pytest.approx(several.data[0].embedding, abs=1e-6)  # same ids, same vector
    single = await sdk.embeddings.create(model="e", input="just one")
    assert len(single.data) == 1


# ---- models ----------------------------------------------------------------------------------------------


async def test_models(sdk: AsyncOpenAI) -> None:
    models = [m async for m in sdk.models.list()]
    assert [(m.id, m.object, m.created, m.owned_by) for m in models] == [("mock", "model", MODEL_CREATED, "agentflow")]
    model = await sdk.models.retrieve("gpt-4o-mini")
    assert (model.id, model.owned_by) == ("gpt-4o-mini", "agentflow")


# ---- errors ----------------------------------------------------------------------------------------------


async def test_429_carries_retry_after_and_the_sdk_honours_it(server: MockLLMServer, sdk: AsyncOpenAI) -> None:
    server.set_faults(Faults(rate_limit_rate=1.0, retry_after_s=2))
    with pytest.raises(openai.RateLimitError) as info:
        await sdk.chat.completions.create(model="m", messages=MSG)
    assert info.value.status_code == 429 and info.value.response.headers["retry-after"] == "2"
    assert "Injected rate limit" in info.value.message and info.value.type == "rate_limit_error"
    server.set_faults(Faults(burst_429=1, retry_after_s=0.2))
    t0 = time.perf_counter()
    resp = await sdk.with_options(max_retries=1).chat.completions.create(model="m", messages=MSG)
    assert resp.choices[0].message.content == TEXT
    assert time.perf_counter() - t0 >= 0.2  # waited as told


async def test_errors_are_openai_shaped(server: MockLLMServer, sdk: AsyncOpenAI) -> None:
    server.set_faults(Faults(error_rate=1.0))
    with pytest.raises(openai.InternalServerError, match="Injected error 500"):
        await sdk.chat.completions.create(model="m", messages=MSG)
    server.set_faults(Faults())
    with pytest.raises(openai.BadRequestError, match="n must be from 1 to 16") as bad:
        await sdk.chat.completions.create(model="m", messages=MSG, n=0)
    assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="messages must not be empty"):
        await sdk.chat.completions.create(model="m", messages=[])
    with pytest.raises(openai.NotFoundError, match="No endpoint GET /v1/files"):
        await sdk.files.list()


async def test_a_wrong_key_is_an_authentication_error() -> None:
    async with MockLLMServer(api_key="sk-right") as server:
        async with AsyncOpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
                await client.chat.completions.create(model="m", messages=MSG)
        async with AsyncOpenAI(base_url=server.url, api_key="sk-right", max_retries=0) as client:
            assert (await client.chat.completions.create(model="m", messages=MSG)).choices[0].message.content
