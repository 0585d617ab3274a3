"""No secret leaves the process: a provider that echoes the API key it was sent (in a 401, a 500 page, a JSON
error message past the first few hundred characters) puts it in no exception message, log record, dead letter
(its value and its Kafka headers), ``/v1/dlq`` answer or metric; ``agentcli loadtest`` masks ``--header`` values in
its JSON and HTML reports and in the recorded command line."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import REPO_ROOT
from kafka_broker import TansuBroker, kafka_settings

from agentcli.loadtest.report import read_report
from agentflow import (
    Context,
    Event,
    LLMAuthError,
    LLMConfig,
    LLMError,
    ProviderClient,
    Runner,
    config_from_dict,
    scrub_secrets,
)

if TYPE_CHECKING:
    from conftest import Eventually

ROOT = REPO_ROOT
KEY_ENV = "AGENTFLOW_TEST_ECHO_KEY"
MSG = [{"role": "user", "content": "hi"}]


def new_key() -> str:
    return "sk-test-" + uuid.uuid4().hex + uuid.uuid4().hex


def _sent(request: web.Request) -> str:
    return request.headers.get("Authorization", "") or request.headers.get("api-key", "")


async def _echo_401(request: web.Request) -> web.Response:
    # As some providers and proxies do: quote the credential in the error.
    message = f"Incorrect API key provided: {_sent(request)}. You sent: Authorization: {_sent(request)}"
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=401)


async def _echo_500(request: web.Request) -> web.Response:
    # A plain-text error page that prints the request headers, the key across the 200th character.
    lines = [f"Authorization: {_sent(request)}", *(f"{k}: {v}" for k, v in request.headers.items())]
    return web.Response(status=500, text="Internal error.\n" + "-" * 140 + "\n" + "\n".join(lines))


async def _echo_400(request: web.Request) -> web.Response:
    # A JSON message whose key starts just before the 300th character: a plain cut would keep its head.
    key = _sent(request).removeprefix("Bearer ")
    return web.json_response({"error": {"message": "x" * 280 + " key=" + key}}, status=400)


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    http = web.Application()
    http.router.add_post("/v1/chat/completions", _echo_401)
    http.router.add_post("/five/v1/chat/completions", _echo_500)
    http.router.add_post("/four/v1/chat/completions", _echo_400)
    async with TestServer(http, host="127.0.0.1") as server:
        yield str(server.make_url("/v1"))


def test_scrub_secrets_masks_known_values_and_credential_shapes() -> None:
    key = new_key()
    assert scrub_secrets(f"Incorrect API key provided: {key}.", [key]) == "Incorrect API key provided: ***."
    assert scrub_secrets(f'{{"authorization": "Bearer {key}"}}') == '{"authorization": "Bearer ***"}'
    assert scrub_secrets("api-key: 0123456789abcdef") == "api-key: ***"
    assert scrub_secrets('"api_key": "local-dev-secret"') == '"api_key": "***"'
    assert scrub_secrets("Authorization: Basic dXNlcjpwYXNzd29yZA==") == "Authorization: Basic ***"
    assert scrub_secrets("https://h/v1?api-key=abcdef123&x=1") == "https://h/v1?api-key=***&x=1"
    assert scrub_secrets("see AIzaSyA1234567890abcdefghijklmnopqrstuv") == "see ***"
    # A key that is not credential-shaped is found by its value, also URL-encoded and JSON-escaped.
    odd = "plain/value+with=chars"
    assert scrub_secrets(f"got {odd} and plain%2Fvalue%2Bwith%3Dchars and plain\\/value+with=chars", [odd]) == (
        "got *** and *** and ***"
    )
    # The head of a known key left by an earlier cut is removed too.
    assert scrub_secrets("token was " + key[:20], [key]) == "token was ***"
    # Ordinary text stays as it is.
    text = "maximum context length is 4096 tokens; the token budget is exhausted; risk-free task-runner"
    assert scrub_secrets(text, [key, "EMPTY"]) == text


@pytest.mark.parametrize("path", ["", "/five", "/four"])
async def test_provider_errors_that_echo_the_key_do_not_carry_it(
    echo: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_key()
    base = echo.removesuffix("/v1") + path + "/v1"
    cfg = msgspec.convert(
        {"base_url": base, "api_key_env": KEY_ENV, "default_model": "m", "retry": {"max_attempts": 1}}, LLMConfig
    )
    caplog.set_level(logging.DEBUG)
    async with ProviderClient("echo", cfg, env={KEY_ENV: key}) as client:
        with pytest.raises(LLMError) as info:
            await client.chat(MSG)
    text = str(info.value)
    assert key not in text and key[:12] not in text, text
    assert "***" in text  # the echo is still visible, masked
    if not path:
        assert isinstance(info.value, LLMAuthError) and "Incorrect API key provided" in text
    assert all(key[:12] not in r.getMessage() for r in caplog.records)


async def test_no_key_in_logs_dead_letters_kafka_headers_dlq_endpoint_or_metrics(
    echo: str,
    kafka_broker: TansuBroker,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    eventually: Eventually,
) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

    key = new_key()
    monkeypatch.setenv(KEY_ENV, key)
    caplog.set_level(logging.DEBUG)
    prefix = f"{uuid.uuid4().hex[:10]}."
    runner = Runner(
        config_from_dict(
            {
                "bus": {"backend": "kafka", "partitions": 1},
                "kafka": kafka_settings(kafka_broker.bootstrap, prefix=prefix),
                "retry": {"max_attempts": 1},
                "monitoring": {"metrics_enabled": True, "port": 0, "ingest_enabled": True},
                "llm": {"echo": {"base_url": echo, "api_key_env": KEY_ENV, "default_model": "m"}},
            }
        )
    )

    @runner.agent("asks")
    async def ask(event: Event, ctx: Context) -> None:
        assert ctx.llm is not None
        await ctx.llm.chat(MSG)

    async with runner, aiohttp.ClientSession() as http:
        await runner.emit("asks", {"q": 1})
        await eventually(lambda: runner.statistics().dead_lettered == 1, timeout_s=10, what="the dead letter")
        [letter] = await runner.dlq.list()
        assert letter.error_type == "LLMAuthError" and "***" in letter.error
        host, port = runner.http_address or ("", 0)
        async with http.get(f"http://{host}:{port}/v1/dlq") as resp:
            dlq_body = await resp.text()
        async with http.get(f"http://{host}:{port}/metrics") as resp:
            metrics_body = await resp.text()
        # The dead letter as a record of the .dlq topic: value and headers.
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(prefix + "asks.dlq", 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            records = (await consumer.getmany(tp, timeout_ms=5000)).get(tp, [])
        finally:
            await consumer.stop()
    assert records
    wire = b"".join(r.value + b"".join(k.encode() + v for k, v in r.headers) for r in records)
    assert b"***" in wire
    head = key[:12]
    places = {
        "dead letter": msgspec.json.encode(letter).decode(),
        "kafka record": wire.decode("utf-8", "replace"),
        "/v1/dlq": dlq_body,
        "/metrics": metrics_body,
        "logs": "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records),
    }
    for place, text in places.items():
        assert head not in text, f"the API key leaked into the {place}"


async def test_loadtest_reports_mask_header_values(tmp_path: Path, echo: str) -> None:
    key = new_key()
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    # A real process, so the echo server keeps serving in this test's loop and the command line is sys.argv.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentcli", "loadtest", "--rate", "20/s", "--duration", "1s",
        "--url", echo + "/chat/completions", "--header", f"Authorization: Bearer {key}",
        f"--header=X-Api-Key: {key}", "--json", str(out), "--report", str(html),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert proc.returncode == 0, output
    rep = read_report(out)
    assert rep.run.errors_by_kind == {"http_401": 20}  # the key was sent as given
    assert rep.spec["headers"] == {"Authorization": "***", "X-Api-Key": "***"}
    assert "Authorization: ***" in rep.command and "--header=X-Api-Key: ***" in rep.command
    for path in (out, html):
        assert key[:12] not in path.read_text(), f"the key leaked into {path.name}"
    assert key[:12] not in output
