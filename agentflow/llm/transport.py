"""The connections of one LLM provider, pre-warmed: the lean HTTP/1.1 pool (:mod:`agentflow.http1`, the default),
or an aiohttp session (``http_client = "aiohttp"``), replaced every ``max_connection_lifetime_s``; and one shared
timer for request timeouts.

Requests that have the whole ``request_timeout_s`` left are bounded by one shared timer
(:class:`~agentflow._deadlines.Deadlines`): the HTTP client gets no total timeout for them (``untimed``), because a
timer per request costs ~4 µs on uvloop. When the timer fires, the request's task is cancelled and the caller
turns that cancellation into a timeout, as ``asyncio.timeout`` does (:class:`~agentflow._deadlines.TimedTask`).
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from .._deadlines import Deadlines, expire_task
from ..config import LLMConfig
from ..http1 import Http1Pool

__all__ = ["USER_AGENT", "ConnectionPool"]

#: Sent with every request, so a provider's logs can tell agentflow's traffic apart.
USER_AGENT = "agentflow/0.1"

logger = logging.getLogger(__name__)


class ConnectionPool:
    """The connections of one provider (``[llm.NAME]`` pool settings) and its shared request timer.

    ``headers`` are the session's own (a request then only copies them); set credentials in them before
    :meth:`open`. ``in_use`` counts requests per session, so a rotated-out session closes once they finish.
    """

    def __init__(self, name: str, config: LLMConfig, headers: dict[str, str]) -> None:
        self.name = name
        self.config = config
        self.base = config.base_url.rstrip("/")
        # A User-Agent of our own also keeps aiohttp off its slower skip-auto-headers path (streams).
        self.headers = headers
        self.untimed = aiohttp.ClientTimeout(total=None, sock_connect=config.connection_timeout_s)
        # An open stream (ctx.llm.stream): no total, since the consumer sets the pace, but no read waits longer.
        self.streaming = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connection_timeout_s, sock_read=config.request_timeout_s
        )
        self.expiries = Deadlines(config.request_timeout_s, expire_task)
        self.session: aiohttp.ClientSession | None = None
        #: ``http_client = "lean"`` (the default): every call's connections; :attr:`session` is then None.
        self.http1: Http1Pool | None = None
        self.in_use: dict[int, int] = {}
        self._rotator: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """Open the pool, pre-warm ``min_connections``; an aiohttp session is also rotated if a lifetime is set."""
        cfg = self.config
        if cfg.http_client == "lean":
            limit = cfg.max_connections
            if cfg.max_connections_per_host:
                limit = min(limit, cfg.max_connections_per_host)
            self.http1 = Http1Pool(
                self.base,
                self.headers,
                limit=limit,
                connect_timeout_s=cfg.connection_timeout_s,
                idle_timeout_s=cfg.idle_timeout_s,
                lifetime_s=cfg.max_connection_lifetime_s,
                max_body=cfg.max_response_bytes,
            )
            n = min(cfg.min_connections, cfg.max_connections)
            opened = await self.http1.prewarm(n)
            if opened < n:
                logger.warning(
                    "Could not pre-warm %d of %d connections to LLM provider %r; calls will connect on demand.",
                    n - opened,
                    n,
                    self.name,
                )
            return  # the lean pool retires each connection at max_connection_lifetime_s itself
        self.session = self._new_session()
        await self._prewarm(self.session)
        lifetime = self.config.max_connection_lifetime_s
        if lifetime is not None:
            self._rotator = asyncio.create_task(self._rotate(lifetime), name=f"llm-{self.name}-rotate")

    async def aclose(self) -> None:
        tasks = [t for t in (self._rotator, *self._retiring) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.http1 is not None:
            self.http1.close()  # fails the requests still in flight
        if self.session is not None:
            await self.session.close()  # fails the requests still in flight
        self.expiries.close()

    def _new_session(self) -> aiohttp.ClientSession:
        cfg = self.config
        connector = aiohttp.TCPConnector(
            limit=cfg.max_connections,
            limit_per_host=cfg.max_connections_per_host,
            keepalive_timeout=cfg.idle_timeout_s,
            ttl_dns_cache=300,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=cfg.request_timeout_s, sock_connect=cfg.connection_timeout_s),
            raise_for_status=False,
            # The session's own headers: a request then only copies them (per-request headers are merged in Python).
            headers=self.headers,
        )

    async def _prewarm(self, session: aiohttp.ClientSession) -> None:
        n = min(self.config.min_connections, self.config.max_connections)
        if n == 0:
            return

        async def touch() -> None:
            async with session.get(f"{self.base}/models") as resp:
                await resp.read()

        # Concurrent requests so each needs its own connection; they stay in the pool (keep-alive) afterwards.
        results = await asyncio.gather(*(touch() for _ in range(n)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            logger.warning(
                "Could not pre-warm %d of %d connections to LLM provider %r (%s); calls will connect on demand.",
                len(failed),
                n,
                self.name,
                type(failed[0]).__name__,
            )

    async def _rotate(self, lifetime_s: float) -> None:
        """Replace the session every ``lifetime_s``, so no connection outlives it by more than one request.

        aiohttp has no per-connection lifetime; a fresh session (pre-warmed) takes new requests, and the old one
        closes once its requests finish (or after ``request_timeout_s``).
        """
        while True:  # noqa: ASYNC110 - a timer, not a poll
            await asyncio.sleep(lifetime_s)
            old, self.session = self.session, self._new_session()
            await self._prewarm(self.session)
            if old is not None:
                task = asyncio.create_task(self._retire(old))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    async def _retire(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + self.config.request_timeout_s
        try:
            # Polled: requests finish far more often than pools rotate, so an Event per request is not worth it.
            while self.in_use.get(id(session), 0) > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        finally:
            self.in_use.pop(id(session), None)
            await session.close()
