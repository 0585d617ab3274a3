"""The runner's HTTP server: ``/metrics`` (Prometheus text), ``/healthz`` (alive) and ``/readyz`` (running).

Binds 127.0.0.1 unless configured otherwise (``[monitoring] host``). Started by the runner when
``monitoring.metrics_enabled`` is true; imported only then, so a runner without it never loads aiohttp.web.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["Service"]


class Service:
    """An aiohttp server bound to ``host:port`` (port 0 picks a free one; see ``address``)."""

    def __init__(self, runner: Runner, *, host: str = "127.0.0.1", port: int = 9464) -> None:
        self._runner = runner
        self._host = host
        self._port = port
        self._app_runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._app_runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._app_runner.setup()
        site = web.TCPSite(self._app_runner, self._host, self._port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self._port
        self.address = (self._host, int(port))

    async def aclose(self) -> None:
        if self._app_runner is not None:
            runner, self._app_runner = self._app_runner, None
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self._runner.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "state": self._runner.state.value})

    async def _readyz(self, request: web.Request) -> web.Response:
        state = self._runner.state.value
        ready = state == "running"
        return web.json_response({"ready": ready, "state": state}, status=200 if ready else 503)
