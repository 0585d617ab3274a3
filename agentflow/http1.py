"""A lean HTTP/1.1 client: kept-alive connections to one origin, one request at a time per connection, each
answer read whole or streamed. The LLM client's calls and the load generator's requests, streams included, go
through it.

A general client (aiohttp) spends most of its time per request on what these requests do not use (cookie jars,
redirects, proxies, per-request URL and header objects, a streaming reader); here a request is a pre-built head and
one write, and the answer is parsed in the connection's own protocol callbacks, at a fraction of the CPU per
request (docs/architecture.md says why; benchmarks.md has the figures).

What it speaks: HTTP/1.1 keep-alive over TCP or TLS (certificates verified against the system's store, or
``SSL_CERT_FILE``), answers framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the end of the
connection, ``1xx`` interim answers skipped, ``Connection: close`` honoured. Bounded: ``limit`` connections
(callers beyond wait in line), headers of at most 64 KiB, bodies of at most ``max_body`` bytes (reading stops
there and the connection closes; the answer's ``content_length`` says how long it was), idle connections closed
after ``idle_timeout_s``, none kept past ``lifetime_s``. A connection the server closed while it sat idle in the
pool fails the next request before a byte of the answer arrives: that request is sent once more on a new
connection (as browsers and urllib3 do); any other failure is the caller's to retry::

    pool = Http1Pool("http://127.0.0.1:8089/v1", {"Content-Type": "application/json"}, limit=16, max_body=1 << 20)
    resp = await pool.request("http://127.0.0.1:8089/v1/chat/completions", b'{"model": "m", "messages": []}')
    resp.status, resp.body
    pool.close()
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import Any
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["BodyStream", "ConnectFailed", "ConnectionClosed", "Http1Pool", "Http1Response", "ProtocolError"]

#: The most header bytes an answer may carry before its body.
MAX_HEADER_BYTES = 64 * 1024
_EMPTY: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
_monotonic = time.monotonic


class ConnectFailed(ConnectionError):
    """The connection could not be opened; ``os_error`` says why."""

    def __init__(self, host: str, port: int, os_error: BaseException) -> None:
        super().__init__(f"cannot connect to {host}:{port}: {os_error}")
        self.os_error = os_error


class ConnectionClosed(ConnectionError):
    """The server closed the connection before its answer was complete."""


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x this client reads."""


class Http1Response:
    """One answer: ``status``, ``headers`` (case-insensitive, parsed when first read), and its body.

    A whole answer (:meth:`Http1Pool.request`) holds no connection: ``body`` is all of it, ``content_length`` its
    length (for a body cut at ``max_body``, more than ``max_body``), :meth:`read` returns it and :meth:`release`
    does nothing. A streamed answer (:meth:`Http1Pool.stream`) comes as soon as its headers are in: read its body
    with ``await resp.content.readany()`` (``b""`` at the end), then :meth:`release` it (its connection goes back
    to the pool when the body was read to the end, and is closed otherwise) or :meth:`close` it.
    """

    __slots__ = ("_head", "_headers", "_owner", "body", "content", "content_length", "status")

    def __init__(self, status: int, head: bytes, body: bytes, content_length: int) -> None:
        self.status = status
        self._head = head
        self._headers: CIMultiDictProxy[str] | None = None
        self.body = body
        self.content_length: int | None = content_length
        self.content: BodyStream | None = None
        self._owner: tuple[Http1Pool, _Connection] | None = None

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        if self._headers is None:
            self._headers = _parse_headers(self._head) if self._head else _EMPTY
        return self._headers

    async def read(self) -> bytes:
        content = self.content
        if content is None:
            return self.body
        parts = []
        while chunk := await content.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            pool, conn = owner
            if conn.reading:
                pool._drop(conn)  # the body was not read to its end: the connection is out of step
            else:
                pool._release(conn)

    def close(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner[0]._drop(owner[1])


class BodyStream:
    """A streamed answer's body as it arrives: :meth:`readany` gives what has come since the last read.

    Reading waits at most ``read_timeout_s`` for the next bytes, and never past ``deadline`` (the loop's clock):
    then ``TimeoutError``, and the connection closes. More than 1 MiB unread pauses the connection until the
    reader catches up.
    """

    __slots__ = ("_conn", "_deadline", "_error", "_eof", "_loop", "_paused", "_pieces", "_read_timeout_s", "_size",
                 "_waiter")  # fmt: skip

    PAUSE_BYTES = 1 << 20

    def __init__(
        self,
        conn: _Connection,
        loop: asyncio.AbstractEventLoop,
        read_timeout_s: float | None,
        deadline: float | None = None,
    ) -> None:
        self._conn = conn
        self._loop = loop
        self._read_timeout_s = read_timeout_s
        self._deadline = deadline
        self._pieces: list[bytes] = []
        self._size = 0
        self._eof = False
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size > self.PAUSE_BYTES and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        if error is None:
            self._eof = True
        elif self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _timed_out(self) -> None:
        self.end(TimeoutError("the answer's next bytes did not come in time"))
        self._conn.close()

    def _wait_s(self) -> float | None:
        wait = self._read_timeout_s
        if self._deadline is not None:
            left = self._deadline - self._loop.time()
            wait = left if wait is None else min(wait, left)
        return wait

    async def readany(self) -> bytes:
        while True:
            pieces = self._pieces
            if pieces:
                data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()
                self._size = 0
                if self._paused:
                    self._paused = False
                    transport = self._conn.transport
                    if transport is not None and not self._conn.closed:
                        transport.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            wait = self._wait_s()
            if wait is not None and wait <= 0:
                self._timed_out()
                continue
            waiter = self._waiter = self._loop.create_future()
            timer = None if wait is None else self._loop.call_later(wait, self._timed_out)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()


def _parse_headers(head: bytes) -> CIMultiDictProxy[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out.add(name.strip().decode("latin-1"), value.strip().decode("latin-1"))
    return CIMultiDictProxy(out)


def _body_framing(head: bytes) -> tuple[int, bool, bool]:
    """``Content-Length`` (-1: none), whether the body is chunked, and whether the connection stays open."""
    keep_alive = head[7:8] == b"1"  # HTTP/1.1 keeps the connection by default, 1.0 does not
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0 and b"\r\ntransfer-encoding:" not in lower and b"\r\nconnection:" not in lower:
        end = lower.find(b"\r\n", at + 17)
        if lower.find(b"\r\ncontent-length:", at + 17) < 0:  # the common case, one length: no line loop
            try:
                return int(lower[at + 17 : end if end >= 0 else len(lower)]), False, keep_alive
            except ValueError:
                pass  # reported below, with the value
    length = -1
    chunked = False
    for line in lower.split(b"\r\n")[1:]:
        if line[:1] not in b"ct":  # none of the three headers read here: skipped unparsed
            continue
        name, _, value = line.partition(b":")
        name = name.strip()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise ProtocolError(f"bad Content-Length: {value.strip()[:20]!r}") from None
        elif name == b"transfer-encoding":
            chunked = value.strip().endswith(b"chunked")
        elif name == b"connection":
            tokens = {t.strip() for t in value.split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
    return length, chunked, keep_alive


# Body framing of the answer being read.
_LENGTH, _CHUNKED, _TO_CLOSE = 0, 1, 2


class _Connection(asyncio.Protocol):
    """One kept-alive connection: writes a request, parses its answer as the bytes arrive."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.created = self.last_used = _monotonic()
        self._waiter: asyncio.Future[Http1Response] | None = None
        #: An answer is being read (the waiter may already have its streamed response).
        self.reading = False
        self._sink: BodyStream | None = None
        self._stream = False  # this request's success streams its body (else every answer is read whole)
        self._read_timeout_s: float | None = None
        self._deadline: float | None = None
        self._buf = bytearray()
        self._got_bytes = False
        # The answer being read; send() resets them for each request.
        self._head: bytes | None = None
        self._status = 0
        self._framing = _LENGTH
        self._need = 0  # _LENGTH: body bytes left to read; _CHUNKED: bytes left in the current chunk (-1: a size line)
        self._body = bytearray()
        self._size = 0  # body bytes seen, kept or not
        self._keep_alive = True

    # ---- the request ----------------------------------------------------------------------------------

    def send(
        self,
        data: bytes,
        loop: asyncio.AbstractEventLoop,
        stream: bool = False,
        read_timeout_s: float | None = None,
        deadline: float | None = None,
    ) -> asyncio.Future[Http1Response]:
        """Write one request; the future gets its answer, whole, or with ``stream`` once its headers are in (a
        success's body then streams; an error status's answer is still read whole)."""
        transport = self.transport
        assert transport is not None
        self._head = None
        self._status = 0
        self._framing = _LENGTH
        self._need = 0
        self._size = 0
        self._keep_alive = True
        if self._body:
            self._body = bytearray()
        self._got_bytes = False
        self.reusable = False
        self.reading = True
        self._sink = None
        self._stream = stream
        self._read_timeout_s = read_timeout_s
        self._deadline = deadline
        waiter = self._waiter = loop.create_future()
        transport.write(data)
        return waiter

    @property
    def got_bytes(self) -> bool:
        """True once any byte of the current answer arrived."""
        return self._got_bytes

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # ---- protocol callbacks --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is not a subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if not self.reading:
            return
        if self._head is not None and self._framing == _TO_CLOSE:
            self._finish()  # the body ran to the end of the connection: that was its framing
            return
        why = f": {exc}" if exc is not None else ""
        self._fail(ConnectionClosed(f"the server closed the connection before the answer was complete{why}"))

    def _fail(self, exc: BaseException) -> None:
        self.reading = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        elif self._sink is not None:
            self._sink.end(exc)

    def data_received(self, data: bytes) -> None:
        if not self.reading:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        self._got_bytes = True
        buf = self._buf
        buf += data
        try:
            while self.reading and buf:
                if self._head is None:
                    if not self._read_head(buf):
                        return
                elif not self._read_body(buf):
                    return
        except ProtocolError as exc:
            self.close()
            self._fail(exc)

    def _read_head(self, buf: bytearray) -> bool:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise ProtocolError(f"the answer's headers are longer than {MAX_HEADER_BYTES} bytes")
            return False
        head = bytes(buf[:end])
        del buf[: end + 4]
        if not head.startswith(b"HTTP/1.") or len(head) < 12 or head[8:9] != b" ":
            raise ProtocolError(f"not an HTTP/1.x answer: {head[:40]!r}")
        try:
            status = int(head[9:12])
        except ValueError:
            first = head.split(b"\r\n", 1)[0]
            raise ProtocolError(f"not an HTTP status line: {first[:40]!r}") from None
        if 100 <= status < 200:
            return True  # an interim answer (100 Continue ...): the real one follows
        self._status = status
        self._head = head
        length, chunked, keep_alive = _body_framing(head)
        self._keep_alive = keep_alive
        if status in (204, 304):
            self._framing, self._need = _LENGTH, 0
        elif chunked:
            self._framing, self._need = _CHUNKED, -1
        elif length > self.max_body and not self._stream:  # refused unread: closed; the caller sees the length
            self._keep_alive = False
            self._size = length
            self._finish()
            return True
        elif length >= 0:
            self._framing, self._need = _LENGTH, length
        else:
            self._framing, self._keep_alive = _TO_CLOSE, False
        if self._stream and 200 <= status < 300 and self._waiter is not None:
            self._hand_out_stream(length)
        if self._framing == _LENGTH and self._need == 0:
            self._finish()
        return True

    def _hand_out_stream(self, length: int) -> None:
        """A streamed success: its response goes out now, and its body to the reader as it arrives."""
        waiter, self._waiter = self._waiter, None
        assert waiter is not None and self._head is not None
        sink = self._sink = BodyStream(self, waiter.get_loop(), self._read_timeout_s, self._deadline)
        resp = Http1Response(self._status, self._head, b"", length)
        resp.content_length = length if length >= 0 else None
        resp.content = sink
        if not waiter.done():
            waiter.set_result(resp)

    def _keep(self, piece: bytes | bytearray) -> None:
        self._size += len(piece)
        if self._sink is not None:
            self._sink.feed(bytes(piece))
        elif self._size <= self.max_body:
            self._body += piece
        else:  # too large: stop reading; the caller sees a length over the limit and refuses the answer
            self._keep_alive = False
            self._finish()

    def _read_body(self, buf: bytearray) -> bool:
        framing = self._framing
        if framing == _LENGTH:
            need = self._need
            if not self._size and len(buf) >= need and self._sink is None:  # the common case: one copy
                self._size = need
                body = bytes(buf[:need])
                del buf[:need]
                self._need = 0
                self._finish(body)
                return True
            take = min(need, len(buf))
            self._keep(buf[:take])
            del buf[:take]
            self._need -= take
            if self._need == 0 and self.reading:
                self._finish()
            return True
        if framing == _TO_CLOSE:
            self._keep(bytes(buf))
            buf.clear()
            return True
        return self._read_chunked(buf)

    def _read_chunked(self, buf: bytearray) -> bool:
        if self._need == -1:  # a chunk-size line
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 1024:
                    raise ProtocolError("a chunk-size line is longer than 1024 bytes")
                return False
            size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
            del buf[: end + 2]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size: {size_text[:20]!r}") from None
            if size == 0:
                self._need = -2  # trailers, up to an empty line
            else:
                self._need = size + 2  # the data and its CRLF
            return True
        if self._need == -2:
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise ProtocolError(f"the answer's trailers are longer than {MAX_HEADER_BYTES} bytes")
                return False
            del buf[: end + 2]
            if end == 0:
                self._finish()
            return True
        take = min(self._need, len(buf))
        data_left = self._need - 2  # what of the chunk is data, not its closing CRLF
        if data_left > 0:
            self._keep(buf[: min(take, data_left)])
            if not self.reading:
                return False
        del buf[:take]
        self._need -= take
        if self._need == 0:
            self._need = -1
        return True

    def _finish(self, body: bytes | None = None) -> None:
        self.reading = False
        self.last_used = _monotonic()
        self.reusable = self._keep_alive and not self.closed and not self._buf
        sink = self._sink
        if sink is not None:
            sink.end()
            return
        waiter, self._waiter = self._waiter, None
        resp = Http1Response(self._status, self._head or b"", bytes(self._body) if body is None else body, self._size)
        if waiter is not None and not waiter.done():
            waiter.set_result(resp)


class Http1Pool:
    """Kept-alive connections to the one host of ``base_url``; :meth:`post` is one request and its whole answer.

    ``headers`` go with every request (the credentials among them are written to the socket only). Bounded by
    ``limit`` connections; see the module docstring for the rest.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        limit: int,
        max_body: int,
        connect_timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
        lifetime_s: float | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"The URL must be an http:// or https:// URL, not {base_url!r}.")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.limit = limit
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.lifetime_s = lifetime_s
        self.max_body = max_body
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.tls else None
        default_port = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if self.port == default_port else f"{host}:{self.port}"
        lines = [f"Host: {authority}"]
        for k, v in headers.items():
            if any(c in k or c in v for c in "\r\n\0") or ":" in k:
                raise ValueError(
                    f"The header {k!r} has a line break or a NUL, or a colon in its name; it cannot be sent."
                )
            if k.lower() not in ("host", "content-length"):
                lines.append(f"{k}: {v}")
        self._fixed = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._heads: dict[tuple[str, str], bytes] = {}
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._all: set[_Connection] = set()
        self._closed = False
        self.connects = 0  # connections opened so far (tests and statistics read it)

    @property
    def open_connections(self) -> int:
        return self._open

    def _head(self, method: str, url: str) -> bytes:
        key = (method, url)
        head = self._heads.get(key)
        if head is None:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self._fixed
            if len(self._heads) < 64:
                self._heads[key] = head
        return head

    def post(
        self, url: str, data: bytes, timeout: Any = None, *, stream: bool = False, read_timeout_s: float | None = None
    ) -> Awaitable[Http1Response]:
        """POST ``data`` to ``url`` (aiohttp's ``session.post`` shape, awaited once; :meth:`request` has the rest).
        A ``timeout`` with a ``total`` (an ``aiohttp.ClientTimeout``) bounds the request, connecting included, and
        a streamed body's reads end by then too; without one the caller bounds it (the LLM client's shared
        timer)."""
        total = getattr(timeout, "total", None)
        if total is None:
            return self.request(url, data, stream=stream, read_timeout_s=read_timeout_s)
        return self._timed(url, data, total, stream, read_timeout_s)

    async def _timed(
        self, url: str, data: bytes, total: float, stream: bool, read_timeout_s: float | None
    ) -> Http1Response:
        deadline = asyncio.get_running_loop().time() + total
        async with asyncio.timeout(total):
            return await self.request(url, data, stream=stream, read_timeout_s=read_timeout_s, deadline=deadline)

    async def request(
        self,
        url: str,
        body: bytes | None,
        *,
        stream: bool = False,
        read_timeout_s: float | None = None,
        deadline: float | None = None,
    ) -> Http1Response:
        """POST ``body`` to ``url`` (a URL on this pool's origin), or GET it when ``body`` is None; the whole
        answer, or with ``stream`` the answer as soon as its headers are in, its body read through
        ``resp.content`` (each read waiting at most ``read_timeout_s``, and none past ``deadline``, a time of the
        loop's clock; see :class:`Http1Response`). Raises
        :class:`ConnectFailed`, :class:`ConnectionClosed` or :class:`ProtocolError`; a request cancelled or failed
        mid-answer closes its connection."""
        if body is None:
            request = self._head("GET", url) + b"\r\n"
        else:
            request = b"%bContent-Length: %d\r\n\r\n%b" % (self._head("POST", url), len(body), body)
        loop = asyncio.get_running_loop()
        conn, reused = await self._acquire(loop)
        try:
            resp = await conn.send(request, loop, stream, read_timeout_s, deadline)
        except ConnectionClosed:
            self._drop(conn)
            if not reused or conn.got_bytes:
                raise
            # A kept-alive connection the server had closed while it sat idle: send once more on a new one.
            conn, _ = await self._acquire(loop, new=True)
            try:
                resp = await conn.send(request, loop, stream, read_timeout_s, deadline)
            except BaseException:
                self._drop(conn)
                raise
        except BaseException:
            self._drop(conn)  # cancelled or failed mid-answer: the connection's state is unknown
            raise
        if resp.content is not None:
            resp._owner = (self, conn)  # the reader gives the connection back (release) or closes it
        else:
            self._release(conn)
        return resp

    async def _acquire(self, loop: asyncio.AbstractEventLoop, new: bool = False) -> tuple[_Connection, bool]:
        """A connection, and whether it was kept from an earlier request."""
        while True:
            if self._closed:
                raise ConnectionError("the connection pool is closed")
            idle = self._idle
            while idle and not new:
                conn = idle.pop()
                if self._usable(conn):
                    return conn, True
                self._drop(conn, wake=False)
            if self._open < self.limit:
                self._open += 1
                try:
                    return await self._connect(loop), False
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # woken and cancelled at once: pass the turn on
                raise

    def _usable(self, conn: _Connection) -> bool:
        if conn.closed or not conn.reusable:
            return False
        if self.idle_timeout_s is None and self.lifetime_s is None:
            return True
        now = _monotonic()
        if self.idle_timeout_s is not None and now - conn.last_used > self.idle_timeout_s:
            return False
        return self.lifetime_s is None or now - conn.created < self.lifetime_s

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        max_body = self.max_body
        try:
            async with asyncio.timeout(self.connect_timeout_s):  # None: the OS's own connect timeout
                _, conn = await loop.create_connection(
                    lambda: _Connection(max_body),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError as exc:
            late = TimeoutError(f"no connection within {self.connect_timeout_s:g} s")
            raise ConnectFailed(self.host, self.port, late) from exc
        except OSError as exc:
            raise ConnectFailed(self.host, self.port, exc) from exc
        self.connects += 1
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        young = self.lifetime_s is None or _monotonic() - conn.created < self.lifetime_s
        if conn.reusable and not self._closed and young:
            self._idle.append(conn)
            self._wake()
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection, wake: bool = True) -> None:
        """Close ``conn``, taken out of the idle list already (or never in it), and give its place back."""
        conn.close()
        if conn in self._all:
            self._all.discard(conn)
            self._open -= 1
        if wake:
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def prewarm(self, n: int) -> int:
        """Open up to ``n`` connections ahead of the first request; how many opened."""
        loop = asyncio.get_running_loop()
        n = min(n, self.limit - self._open)
        self._open += n
        results = await asyncio.gather(*(self._connect(loop) for _ in range(n)), return_exceptions=True)
        opened = 0
        for r in results:
            if isinstance(r, _Connection):
                r.reusable = True
                self._idle.append(r)
                opened += 1
            else:
                self._open -= 1
        return opened

    def close(self) -> None:
        """Close every connection; requests waiting for one fail."""
        self._closed = True
        for conn in self._all:
            conn.close()  # in-flight requests fail with ProtocolError
        self._all.clear()
        self._idle.clear()
        self._open = 0
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)  # it finds the pool closed
