"""The lean HTTP/1.1 client of unary LLM calls, against real servers on loopback: framing (length, chunked, to the
end of the connection, 1xx, 204), keep-alive and its limits, a stale kept-alive connection sent again, malformed
and oversized answers, cancellation, the connection limit, TLS, and how its failures reach ProviderClient."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from agentflow.config import LLMConfig, config_from_dict
from agentflow.errors import LLMBadRequestError, LLMUnavailableError
from agentflow.http1 import BodyStream, ConnectFailed, ConnectionClosed, Http1Pool, ProtocolError
from agentflow.llm.client import ProviderClient

OK = (
    b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":'
    b'{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)
MSG = [{"role": "user", "content": "hello"}]

# A handler gets the request (head and body) and the connection's writer, and says whether to keep reading.
Handler = Callable[[bytes, bytes, asyncio.StreamWriter, int], Awaitable[bool]]


class Server:
    """A scripted HTTP/1.1 server: ``handler(head, body, writer, n)`` answers the connection's n-th request."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.open_now = 0
        self.max_open = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{'localhost' if self.tls else '127.0.0.1'}:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        n = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                n += 1
                if not await self.handler(head, body, writer, n):
                    return
                await writer.drain()
        finally:
            self.open_now -= 1
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    made: list[Server] = []

    async def make(handler: Handler, tls: ssl.SSLContext | None = None) -> Server:
        made.append(await Server(handler, tls).start())
        return made[-1]

    yield make
    for s in made:
        await s.close()


def llm(url: str, **over: object) -> LLMConfig:
    """A provider config for ``url``: one attempt unless told, no backoff."""
    data: dict[str, object] = {"base_url": url, "default_model": "m"}
    retry: dict[str, object] = {"max_attempts": 1, "initial_backoff_s": 0.0, "jitter_s": 0.0, "max_backoff_s": 0.0}
    retry.update(over.pop("retry", {}))  # type: ignore[call-overload]
    data["retry"] = retry
    data.update(over)
    return config_from_dict({"llm": {"p": data}}).llm["p"]


def pool(url: str, **kwargs: object) -> Http1Pool:
    options: dict[str, object] = {"limit": 4, "connect_timeout_s": 2.0, "idle_timeout_s": 30.0, "max_body": 1 << 20}
    options.update(kwargs)
    return Http1Pool(url, {"Content-Type": "application/json"}, **options)  # type: ignore[arg-type]


def answer(body: bytes = OK, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%b\r\n%b" % (
        status.encode(),
        len(body),
        extra,
        body,
    )


async def plain(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
    w.write(answer())
    return True


async def test_requests_reuse_one_kept_alive_connection_and_carry_the_headers(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(plain)
    p = Http1Pool(
        server.url,
        {"Content-Type": "application/json", "Authorization": "Bearer k"},
        limit=4,
        connect_timeout_s=2.0,
        idle_timeout_s=30.0,
        max_body=1 << 20,
    )
    for i in range(3):
        resp = await p.post(server.url + "/chat/completions", b'{"i": %d}' % i)
        assert resp.status == 200 and await resp.read() == OK and resp.content_length == len(OK)
        assert resp.headers["content-type"] == "application/json"
    assert server.connections == 1 and p.connects == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in first and b"\r\nAuthorization: Bearer k\r\n" in first
    assert first.endswith(b'\r\nContent-Length: 8\r\n\r\n{"i": 0}')
    p.close()
    assert p.open_connections == 0


async def test_a_chunked_answer_with_extensions_and_trailers_is_joined(serve) -> None:  # type: ignore[no-untyped-def]
    async def chunked(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        parts = [OK[:10], OK[10:50], OK[50:]]
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            w.write(b"%x;ext=1\r\n%b\r\n" % (len(part), part))
            await w.drain()
        w.write(b"0\r\nX-Trailer: t\r\n\r\n")
        return True

    server = await serve(chunked)
    p = pool(server.url)
    for _ in range(2):  # the connection is still usable after a chunked answer
        resp = await p.post(server.url + "/chat/completions", b"{}")
        assert await resp.read() == OK and resp.content_length == len(OK)
    assert server.connections == 1
    p.close()


async def test_interim_answers_are_skipped_and_204_has_no_body(serve) -> None:  # type: ignore[no-untyped-def]
    async def interim(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            w.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer())
        else:
            w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        return True

    server = await serve(interim)
    p = pool(server.url)
    assert await (await p.post(server.url + "/x", b"{}")).read() == OK
    resp = await p.post(server.url + "/x", b"{}")
    assert resp.status == 204 and await resp.read() == b""
    assert server.connections == 1
    p.close()


async def test_connection_close_and_http10_bodies_read_to_the_end(serve) -> None:  # type: ignore[no-untyped-def]
    async def closing(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        if server.connections == 1:
            w.write(answer(extra=b"Connection: close\r\n"))
        else:  # HTTP/1.0, no length: the body is what comes until the connection ends
            w.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK)
        await w.drain()
        return False

    server = await serve(closing)
    p = pool(server.url)
    assert await (await p.post(server.url + "/x", b"{}")).read() == OK
    assert await (await p.post(server.url + "/x", b"{}")).read() == OK
    assert server.connections == 2 and p.open_connections == 0  # neither was kept
    p.close()


async def test_a_kept_alive_connection_the_server_closed_is_sent_again_once(serve) -> None:  # type: ignore[no-untyped-def]
    async def once(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(answer())  # keep-alive by the headers, but the server closes the connection right after
        await w.drain()
        return False

    server = await serve(once)
    p = pool(server.url)
    assert (await p.post(server.url + "/x", b"{}")).status == 200
    await asyncio.sleep(0.05)  # the close reaches the idle connection
    assert (await p.post(server.url + "/x", b"{}")).status == 200
    assert server.connections == 2 and len(server.requests) == 2  # the stale connection carried nothing
    p.close()


async def test_an_answer_cut_off_on_a_new_connection_fails_and_is_not_sent_again(serve) -> None:  # type: ignore[no-untyped-def]
    async def cut(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
        await w.drain()
        return False

    server = await serve(cut)
    p = pool(server.url)
    with pytest.raises(ConnectionClosed, match="before the answer was complete"):
        await p.post(server.url + "/x", b"{}")
    assert len(server.requests) == 1 and p.open_connections == 0
    p.close()


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 2xx OK\r\n\r\n", "not an HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024), "headers are longer than"),
    ],
)
async def test_malformed_answers_fail_with_what_is_wrong(serve, reply: bytes, match: str) -> None:  # type: ignore[no-untyped-def]
    async def bad(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(reply)
        await w.drain()
        await asyncio.sleep(0.5)
        return False

    server = await serve(bad)
    p = pool(server.url)
    with pytest.raises(ProtocolError, match=match):
        await p.post(server.url + "/x", b"{}")
    assert p.open_connections == 0
    p.close()


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_max_response_bytes_is_refused_by_the_client(serve, chunked: bool) -> None:  # type: ignore[no-untyped-def]
    big = b'{"pad": "' + b"x" * 5000 + b'"}'

    async def large(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        if chunked:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(big), 1000):
                piece = big[i : i + 1000]
                w.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            w.write(b"0\r\n\r\n")
        else:
            w.write(answer(big))
        return True

    server = await serve(large)
    config = llm(server.url, max_response_bytes=2000)
    async with ProviderClient("p", config, env={}) as client:
        with pytest.raises(LLMBadRequestError, match="larger than max_response_bytes"):
            await client.chat(MSG)
        http1 = client._pool.http1
        assert http1 is not None and http1.open_connections == 0  # the rest of the body was not read: closed


async def test_at_most_limit_connections_and_callers_beyond_wait_their_turn(serve) -> None:  # type: ignore[no-untyped-def]
    async def slow(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.02)
        w.write(answer(body))
        return True

    server = await serve(slow)
    p = pool(server.url, limit=2)
    bodies = [b'{"i": %d}' % i for i in range(10)]
    got = await asyncio.gather(*(p.post(server.url + "/x", b) for b in bodies))
    assert [await r.read() for r in got] == bodies  # each caller its own answer
    assert server.max_open == 2 and p.connects == 2
    p.close()


async def test_a_cancelled_request_closes_its_connection_and_frees_its_slot(serve) -> None:  # type: ignore[no-untyped-def]
    async def hang_first(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        if server.connections == 1:
            await asyncio.sleep(5)
        w.write(answer())
        return True

    server = await serve(hang_first)
    p = pool(server.url, limit=1)
    task = asyncio.create_task(p.post(server.url + "/x", b"{}"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert p.open_connections == 0
    assert (await p.post(server.url + "/x", b"{}")).status == 200  # the slot came back: a new connection
    assert p.connects == 2
    p.close()


async def test_a_total_timeout_bounds_the_request(serve) -> None:  # type: ignore[no-untyped-def]
    async def hang(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(5)
        return False

    class Timeout:
        total = 0.1

    server = await serve(hang)
    p = pool(server.url)
    with pytest.raises(TimeoutError):
        await p.post(server.url + "/x", b"{}", timeout=Timeout())
    assert p.open_connections == 0
    p.close()


async def test_idle_and_old_connections_are_not_reused(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(plain)
    idle = pool(server.url, idle_timeout_s=0.05)
    await idle.post(server.url + "/x", b"{}")
    await asyncio.sleep(0.1)
    await idle.post(server.url + "/x", b"{}")
    assert idle.connects == 2 and idle.open_connections == 1
    idle.close()
    old = pool(server.url, lifetime_s=0.05)
    await old.post(server.url + "/x", b"{}")
    await asyncio.sleep(0.1)
    await old.post(server.url + "/x", b"{}")
    assert old.connects == 2
    old.close()


async def test_prewarm_opens_connections_ahead_of_the_first_request(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(plain)
    p = pool(server.url, limit=4)
    assert await p.prewarm(3) == 3
    await asyncio.sleep(0.05)
    assert server.connections == 3
    await asyncio.gather(*(p.post(server.url + "/x", b"{}") for _ in range(3)))
    assert server.connections == 3 and p.connects == 3
    p.close()


async def test_a_refused_connection_is_a_clear_unavailable_error() -> None:
    # A port nothing listens on: bind one, note it, close it.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    p = pool(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ConnectFailed):
        await p.post(f"http://127.0.0.1:{port}/v1/x", b"{}")
    assert p.open_connections == 0
    config = llm(f"http://127.0.0.1:{port}/v1")
    async with ProviderClient("p", config, env={}) as client:
        with pytest.raises(LLMUnavailableError, match="Cannot connect to LLM provider 'p'"):
            await client.chat(MSG)


async def test_a_dropped_answer_reaches_the_client_as_unavailable(serve) -> None:  # type: ignore[no-untyped-def]
    async def drop(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        return False  # close without a byte

    server = await serve(drop)
    config = llm(server.url, retry={"max_attempts": 2})
    async with ProviderClient("p", config, env={}) as client:
        with pytest.raises(LLMUnavailableError, match="failed mid-request"):
            await client.chat(MSG)
    assert len(server.requests) == 2  # the client's retry policy, not the pool, sent it again


async def test_tls_with_a_certificate_from_the_trusted_store(serve, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server = await serve(plain, tls=server_ctx)
    config = llm(server.url)
    async with ProviderClient("p", config, env={}) as client:
        assert (await client.chat(MSG)).text == "hi"
        assert (await client.chat(MSG)).text == "hi"
    assert server.connections == 1
    monkeypatch.delenv("SSL_CERT_FILE")
    untrusted = pool(server.url)
    with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
        await untrusted.post(server.url + "/x", b"{}")
    untrusted.close()


async def test_the_aiohttp_client_can_still_be_chosen(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(plain)
    config = llm(server.url, http_client="aiohttp")
    async with ProviderClient("p", config, env={}) as client:
        assert client._pool.http1 is None
        assert (await client.chat(MSG)).text == "hi"
    assert b"\r\nAccept-Encoding: gzip, deflate\r\n" in server.requests[0]  # aiohttp's own header: aiohttp sent it


async def sse(w: asyncio.StreamWriter, events: list[bytes], gap_s: float = 0.0) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    for event in events:
        w.write(b"%x\r\n%b\r\n" % (len(event), event))
        await w.drain()
        if gap_s:
            await asyncio.sleep(gap_s)
    w.write(b"0\r\n\r\n")


async def test_a_streamed_body_arrives_piece_by_piece_and_its_connection_is_reused(serve) -> None:  # type: ignore[no-untyped-def]
    events = [b"data: %d\n\n" % i for i in range(5)]

    async def streaming(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        await sse(w, events, gap_s=0.02)
        return True

    server = await serve(streaming)
    p = pool(server.url)
    for _ in range(2):
        resp = await p.request(server.url + "/x", b"{}", stream=True, read_timeout_s=5.0)
        assert resp.status == 200 and resp.content is not None and resp.content_length is None
        got = []
        while chunk := await resp.content.readany():
            got.append(chunk)
        assert len(got) >= 3 and b"".join(got) == b"".join(events)  # pieces as they came, not one whole body
        resp.release()
    assert server.connections == 1 and p.open_connections == 1
    p.close()


async def test_a_stream_left_early_closes_its_connection(serve) -> None:  # type: ignore[no-untyped-def]
    async def streaming(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        await sse(w, [b"data: x\n\n"] * 50, gap_s=0.01)
        return True

    server = await serve(streaming)
    p = pool(server.url)
    resp = await p.request(server.url + "/x", b"{}", stream=True)
    assert resp.content is not None and await resp.content.readany()
    resp.release()  # not read to the end: the connection cannot be reused
    resp.close()  # idempotent
    assert p.open_connections == 0
    assert (await p.request(server.url + "/x", b"{}", stream=True)).status == 200
    assert p.connects == 2
    p.close()


async def test_a_stream_fails_on_a_silent_server_and_at_its_deadline(serve) -> None:  # type: ignore[no-untyped-def]
    async def stalls(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
        await w.drain()
        await asyncio.sleep(3)
        return False

    server = await serve(stalls)
    p = pool(server.url)
    resp = await p.request(server.url + "/x", b"{}", stream=True, read_timeout_s=0.1)
    assert resp.content is not None and await resp.content.readany() == b"data: 1\n\n"
    with pytest.raises(TimeoutError):
        await resp.content.readany()
    resp.close()
    assert p.open_connections == 0

    class Timeout:
        total = 0.2

    resp = await p.post(server.url + "/x", b"{}", Timeout(), stream=True, read_timeout_s=10.0)
    assert resp.content is not None and await resp.content.readany() == b"data: 1\n\n"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):  # the total bounds the reads too, well before read_timeout_s
        await resp.content.readany()
    assert loop.time() - t0 < 2.0
    resp.close()
    p.close()


async def test_a_stream_cut_by_the_server_raises_and_an_error_status_is_read_whole(serve) -> None:  # type: ignore[no-untyped-def]
    async def cut(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        if server.connections == 1:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
            await w.drain()
            return False
        w.write(answer(b'{"error": {"message": "slow down"}}', status="429 Too Many Requests"))
        return True

    server = await serve(cut)
    p = pool(server.url)
    resp = await p.request(server.url + "/x", b"{}", stream=True)
    assert resp.content is not None and await resp.content.readany() == b"data: 1\n\n"
    with pytest.raises(ConnectionClosed):
        await resp.content.readany()
    resp.release()
    resp = await p.request(server.url + "/x", b"{}", stream=True)
    assert resp.status == 429 and resp.content is None and b"slow down" in await resp.read()
    resp.release()
    assert p.open_connections == 1  # the error answer was read whole: its connection is kept
    p.close()


async def test_a_reader_behind_pauses_the_connection_and_still_gets_every_byte(serve) -> None:  # type: ignore[no-untyped-def]
    piece = b"x" * 65536

    async def big(head: bytes, body: bytes, w: asyncio.StreamWriter, n: int) -> bool:
        await sse(w, [piece] * 64)  # 4 MiB, more than the reader keeps buffered
        return True

    server = await serve(big)
    p = pool(server.url)
    resp = await p.request(server.url + "/x", b"{}", stream=True)
    assert resp.content is not None
    await asyncio.sleep(0.3)  # the server writes ahead; the client stops reading past 1 MiB
    assert resp.content._size <= BodyStream.PAUSE_BYTES + 4 * 65536  # not the whole 4 MiB
    total = 0
    while chunk := await resp.content.readany():
        total += len(chunk)
    assert total == 64 * 65536
    resp.release()
    assert p.open_connections == 1
    p.close()


def test_a_header_that_would_split_the_request_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        Http1Pool("http://127.0.0.1:1/v1", {"Authorization": "Bearer k\r\nX-Evil: 1"}, limit=1, max_body=1)
