"""A lean HTTP/1.1 client for the load generator: keep-alive connections to one ``http://`` origin, one request
at a time per connection, the whole response body read into memory.

A general client (aiohttp) spends most of a core's time per request on what a load generator does not need
(cookies, redirects, proxies, tracing, multipart, a response object); a request here is a prebuilt header block,
one write and a parser that reads the status, ``Content-Length``, ``Transfer-Encoding: chunked`` and
``Connection: close``. TLS and streamed responses stay with aiohttp (see :class:`~.targets.HttpTarget`).

::

    async with Http1Client("http://127.0.0.1:8089/v1/chat/completions", connections=64) as client:
        status, body = await client.request(b'{"model": "m"}')
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

__all__ = ["BadResponseError", "BodyTooLargeError", "Http1Client"]

#: Largest header block read; a bigger one is a bad response.
MAX_HEAD_BYTES = 64 * 1024


class BadResponseError(Exception):
    """The server's answer is not HTTP/1.x this client can read."""


class BodyTooLargeError(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``waiter`` gets (status, body) when a whole response has arrived."""

    __slots__ = ("_body_left", "_buf", "_chunked", "_head", "_keep", "_status", "closed", "max_body", "transport",
                 "waiter")  # fmt: skip

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()
        self._head = True
        self._status = 0
        self._keep = True
        self._chunked = False
        self._body_left = -1  # -1: until the connection closes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if not self._head and not self._chunked and self._body_left < 0:
            waiter.set_result((self._status, bytes(self._buf)))  # a body delimited by the close
        else:
            waiter.set_exception(ConnectionResetError("The server closed the connection before answering."))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        assert self.transport is not None
        self._reset()
        self.waiter = waiter
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        buf = self._buf
        buf += data
        try:
            if self._head and not self._parse_head():
                return
            done = self._parse_chunks() if self._chunked else self._body_done()
        except (BadResponseError, BodyTooLargeError) as exc:
            self.close()
            waiter.set_exception(exc)
            return
        if done is not None:
            if not self._keep:
                self.close()
            waiter.set_result((self._status, done))

    def _parse_head(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise BadResponseError(f"The response headers are over {MAX_HEAD_BYTES} bytes.")
            return False
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[: end + 4]
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
            raise BadResponseError(f"The response does not start with an HTTP/1.x status line: {lines[0][:80]!r}.")
        status = int(status_line[1])
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return self._parse_head() if buf else False
        self._status = status
        self._keep = status_line[0] != b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    self._body_left = int(value)
                except ValueError:
                    raise BadResponseError(f"Content-Length {value.strip()[:40]!r} is not a number.") from None
                if self._body_left > self.max_body:
                    raise BodyTooLargeError(f"response body over {self.max_body} bytes")
            elif name == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            elif name == b"connection":
                value = value.strip().lower()
                self._keep = value != b"close" and (self._keep or value == b"keep-alive")
        if status in (204, 304):
            self._body_left = 0
        self._head = False
        if self._body_left < 0 and not self._chunked:
            self._keep = False  # the body ends with the connection
        return True

    def _body_done(self) -> bytes | None:
        buf, left = self._buf, self._body_left
        if left < 0:
            if len(buf) > self.max_body:
                raise BodyTooLargeError(f"response body over {self.max_body} bytes")
            return None
        if len(buf) < left:
            return None
        if len(buf) > left:
            raise BadResponseError("The server sent more bytes than its Content-Length.")
        return bytes(buf)

    def _parse_chunks(self) -> bytes | None:
        """The body once its last chunk is in; chunks are decoded only then (a load test's bodies are small)."""
        buf = self._buf
        if len(buf) > self.max_body + MAX_HEAD_BYTES:
            raise BodyTooLargeError(f"response body over {self.max_body} bytes")
        out = bytearray()
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            try:
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            except ValueError:
                raise BadResponseError("A chunk of the response has no valid size.") from None
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)  # trailers, if any, end with an empty line
                if end < 0 and buf[eol + 2 : eol + 4] != b"\r\n":
                    return None
                if len(out) > self.max_body:
                    raise BodyTooLargeError(f"response body over {self.max_body} bytes")
                return bytes(out)
            start = eol + 2
            if len(buf) < start + size + 2:
                return None
            out += buf[start : start + size]
            pos = start + size + 2


class Http1Client:
    """Requests to one URL over up to ``connections`` keep-alive connections; callers past that wait in turn."""

    def __init__(
        self, url: str, *, connections: int, headers: dict[str, str] | None = None, max_body: int = 8 * 1024 * 1024
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// URL; give one such as http://127.0.0.1:8089/v1/chat.")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.connections = connections
        self.max_body = max_body
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rsplit("@", 1)[-1]
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items() if k.lower() not in _OWN_HEADERS)
        self._get = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1")
        self._post = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}".encode(
            "latin-1"
        )
        self._idle: deque[_Connection] = deque()
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._open = 0  # connections open or being opened
        self._all: set[_Connection] = set()

    async def __aenter__(self) -> Http1Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()

    async def request(self, body: bytes | None) -> tuple[int, bytes]:
        """POST ``body`` as JSON (GET when None); (status, body). Raises OSError, BadResponseError or
        BodyTooLargeError; a cancelled or failed request closes its connection."""
        data = self._get if body is None else b"%sContent-Length: %d\r\n\r\n%s" % (self._post, len(body), body)
        conn = await self._acquire()
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        try:
            conn.send(data, waiter)
            result = await waiter
        except BaseException:
            conn.close()
            self._release(conn)
            raise
        self._release(conn)
        return result

    async def _acquire(self) -> _Connection:
        idle, loop = self._idle, asyncio.get_running_loop()
        while True:
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    return conn
                self._forget(conn)
            if self._open < self.connections:
                break
            fut: asyncio.Future[None] = loop.create_future()
            self._waiting.append(fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._wake()  # pass the turn on
                raise
        self._open += 1
        try:
            _transport, conn = await loop.create_connection(lambda: _Connection(self.max_body), self.host, self.port)
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.closed:
            self._forget(conn)
        else:
            self._idle.append(conn)
        self._wake()

    def _forget(self, conn: _Connection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            self._open -= 1

    def _wake(self) -> None:
        waiting = self._waiting
        while waiting:
            fut = waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                return


_OWN_HEADERS = {"host", "content-length", "content-type", "transfer-encoding", "connection"}
