"""The load generator's plain-HTTP path (agentflow.http1.Http1Pool, as HttpTarget uses it) against a real aiohttp
server and raw sockets for what aiohttp's server does not send (chunked bodies, a close-delimited body, garbage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agentcli.loadtest.plan import resolve
from agentcli.loadtest.scenario import LoadSpec
from agentcli.loadtest.session import run_local
from agentcli.loadtest.targets import MAX_BODY_BYTES, BodyTooLargeError, HttpTarget, Probe
from agentflow.http1 import Http1Pool, ProtocolError


class Http1Client:
    """(status, body) per request to one URL, over the pool as HttpTarget uses it."""

    def __init__(self, url: str, *, connections: int, headers: dict[str, str] | None = None) -> None:
        self.url = url
        own = {"Content-Type": "application/json", **(headers or {})}
        self.pool = Http1Pool(url, own, limit=connections, max_body=MAX_BODY_BYTES)

    async def __aenter__(self) -> Http1Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.pool.close()

    async def request(self, body: bytes | None) -> tuple[int, bytes]:
        resp = await self.pool.request(self.url, body)
        return resp.status, resp.body


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[str]]]:
    peers: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        peers.append(str(request.transport.get_extra_info("peername") if request.transport else None))
        if request.method == "GET":
            return web.json_response({"get": True, "auth": request.headers.get("authorization")})
        body = await request.read()
        status = int(request.query.get("status", "200"))
        return web.Response(body=body, status=status, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/echo", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/echo")), peers


async def test_posts_and_gets_over_few_kept_alive_connections(echo: tuple[str, list[str]]) -> None:
    url, peers = echo
    async with Http1Client(url, connections=2, headers={"Authorization": "Bearer t"}) as client:
        answers = await asyncio.gather(*(client.request(b'{"n": %d}' % i) for i in range(20)))
        assert answers == [(200, b'{"n": %d}' % i) for i in range(20)]
        assert await client.request(None) == (200, b'{"get": true, "auth": "Bearer t"}')
    assert len(set(peers)) <= 2  # 21 requests, never more connections than allowed


async def test_an_error_status_is_returned_with_its_body(echo: tuple[str, list[str]]) -> None:
    url, _ = echo
    async with Http1Client(url + "?status=503", connections=1) as client:
        assert await client.request(b"{}") == (503, b"{}")
        assert await client.request(b"[]") == (503, b"[]")  # the connection is still usable


async def raw_server(answer: Callable[[bytes], bytes]) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)  # fmt: skip
                out = answer(await reader.readexactly(length))
                writer.write(out)
                await writer.drain()
                if b"Content-Length" not in out and b"chunked" not in out:
                    return  # the body ends with the connection
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client closed the connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/x"


async def test_chunked_close_delimited_and_interim_answers() -> None:
    chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"
    server, url = await raw_server(lambda body: chunked)
    async with server, Http1Client(url, connections=1) as client:
        assert await client.request(b"1") == (200, b"abcdefg")
        assert await client.request(b"2") == (200, b"abcdefg")
    server, url = await raw_server(lambda body: b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    async with server, Http1Client(url, connections=1) as client:
        assert await client.request(b"1") == (200, b"until the end")
        assert await client.request(b"2") == (200, b"until the end")  # a new connection


async def test_bad_and_oversized_answers_raise_and_close_the_connection() -> None:
    server, url = await raw_server(lambda body: b"SMTP ready\r\n\r\n")
    async with server, Http1Client(url, connections=1) as client:
        with pytest.raises(ProtocolError, match="not an HTTP/1.x answer"):
            await client.request(b"1")
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
    server, url = await raw_server(lambda body: big)
    async with server:
        target = HttpTarget(url, connections=1, timeout_s=5.0)
        async with target:
            for _ in range(2):  # the second on a fresh connection, refused the same way
                with pytest.raises(BodyTooLargeError) as caught:
                    await target.call({"n": 1}, Probe())
                assert target.error_kind(caught.value) == "too_large"


async def test_a_refused_connection_is_a_connect_error_in_the_report() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    url = f"http://127.0.0.1:{port}/x"
    outcome = await run_local(resolve(LoadSpec(rate="20/s", duration="500ms", url=url)), None)
    total = outcome.collector.total()
    assert total.errors == total.started == 10 and total.errors_by_kind == {"connect": 10}


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="must be an http:// or https:// URL"):
        Http1Pool("ftp://example.com/", {}, limit=1, max_body=1)
