"""The runner's HTTP server: ``/metrics`` (Prometheus text), ``/healthz`` (alive), ``/readyz`` (ready for work),
the profile, cost and alert reports (:mod:`.insight`), with ``[monitoring] ingest_enabled`` the ingest
(:mod:`.ingest`), dead-letter (:mod:`.dlq`) and workflow (:mod:`.workflows`) routes, and with ``[monitoring]
profiling`` the ``/debug`` routes (:mod:`.debug`), behind the bearer-token rule of :mod:`.auth`.

Binds 127.0.0.1 unless configured otherwise (``[monitoring] host``). Started by the runner when
``monitoring.metrics_enabled`` is true; imported only then, so a runner without it never loads aiohttp.web.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .auth import BearerToken
from .debug import DebugRoutes
from .dlq import DeadLetterRoutes
from .ingest import Ingest
from .insight import InsightRoutes
from .workflows import WorkflowRoutes

if TYPE_CHECKING:
    from ..runner import Runner

__all__ = ["Service"]

_SMALL_BODY = 64 * 1024  # what /metrics and the probes need; ingest raises it to monitoring.max_body_bytes


class Service:
    """An aiohttp server bound to ``host:port`` (port 0 picks a free one; see ``address``).

    ``draining`` (set by ``agentcli run`` on SIGTERM) makes ``/readyz`` and ingest answer 503, so a load
    balancer stops sending work before the runner closes.
    """

    def __init__(self, runner: Runner, *, host: str = "127.0.0.1", port: int = 9464) -> None:
        self._runner = runner
        self._host = host
        self._port = port
        self._app_runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None
        mon = runner.config.monitoring
        # Built here, not in start(): a missing token must fail the runner's start before anything listens.
        #: Refused requests by HTTP status, over every JSON route.
        self.refused: dict[int, int] = {}
        self.ingest: Ingest | None = None
        self.dead_letters: DeadLetterRoutes | None = None
        self.workflows: WorkflowRoutes | None = None
        if mon.ingest_enabled:
            token = BearerToken(mon, "HTTP ingest", "monitoring.ingest_enabled")
            self.ingest = Ingest(runner, mon, token, self.refused)
            self.dead_letters = DeadLetterRoutes(runner, mon, token, self.refused)
            self.workflows = WorkflowRoutes(runner, mon, token, self.refused)
        reports = BearerToken(mon, "The profile, cost and alert endpoints", "", refuse_start=False)
        self.insight = InsightRoutes(runner, mon, reports, self.refused)
        self.debug: DebugRoutes | None = None
        if mon.profiling:
            token = BearerToken(mon, "Profiling (/debug/*)", "monitoring.profiling")
            self.debug = DebugRoutes(runner, mon, token, self.refused)
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        if self.ingest is not None:
            self.ingest.draining = value

    def __repr__(self) -> str:
        ingest = "off" if self.ingest is None else f"accepted={self.ingest.accepted}"
        return f"<Service address={self.address} draining={self._draining} ingest={ingest}>"

    async def start(self) -> None:
        max_body = _SMALL_BODY
        if self.ingest is not None:
            max_body = max(max_body, self._runner.config.monitoring.max_body_bytes)
        app = web.Application(client_max_size=max_body)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        for routes in (self.ingest, self.dead_letters, self.workflows, self.insight, self.debug):
            if routes is not None:
                routes.add_routes(app)
        self._app_runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._app_runner.setup()
        site = web.TCPSite(self._app_runner, self._host, self._port, reuse_address=True)
        await site.start()
        addresses = self._app_runner.addresses  # (host, port, ...) of each listening socket; port 0 resolved
        port = addresses[0][1] if addresses else self._port
        self.address = (self._host, int(port))

    async def aclose(self) -> None:
        if self.debug is not None:
            self.debug.close()  # a CPU profile being taken answers now instead of holding the shutdown
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
        body: dict[str, Any] = {"state": state}
        ready = state == "running"
        if self._draining:
            body["draining"] = True
            ready = False
        # A bus that knows more (the Kafka bus: connected, partitions assigned) says so through `ready`.
        bus_ready = getattr(self._runner.bus, "ready", None)
        if isinstance(bus_ready, bool):
            body["bus_ready"] = bus_ready
            ready = ready and bus_ready
        # Dead letters that cannot be written hold their events (and soon the partitions): not ready for more.
        failing = self._runner._dead_letters_failing()
        if failing:
            body["dead_letters_failing"] = failing
            ready = False
        body["ready"] = ready
        return web.json_response(body, status=200 if ready else 503)
