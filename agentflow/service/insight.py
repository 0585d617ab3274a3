"""The insight routes of the HTTP service: ``GET /v1/profile`` (the profile report, or the raw snapshot),
``GET /v1/costs`` (the cost report over a window) and ``GET /alerts`` (every alert with its figure, threshold
and recommendation).

On by default with the server, behind the bearer-token rule of :mod:`.auth`: with ``[monitoring] token_env``
set they need the token; bound beyond loopback without one they answer 403 (the server still starts, since
``/metrics`` and the probes need none).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from aiohttp import web

from ..insight.costs import build_cost_report
from .auth import BadRequest, BearerToken, JsonRoutes

if TYPE_CHECKING:
    from ..config import MonitoringConfig
    from ..runner import Runner

__all__ = ["InsightRoutes", "query_number"]

#: The longest window /v1/costs reads from this process's ledger (it keeps a day).
MAX_WINDOW_S = 86_400.0


def query_number(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
    """A number from the query string, between ``lo`` and ``hi``; BadRequest (400) with a sentence otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not lo <= value <= hi:  # NaN fails too
        raise BadRequest(400, f"{name}={raw[:40]!r} is not a number from {lo:g} to {hi:g}.")
    return value


class InsightRoutes(JsonRoutes):
    """``/v1/profile``, ``/v1/costs`` and ``/alerts`` of one runner."""

    def __init__(self, runner: Runner, config: MonitoringConfig, token: BearerToken, refused: dict[int, int]) -> None:
        super().__init__(config, token, refused)
        self._runner = runner

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/profile", self.profile)
        app.router.add_get("/v1/costs", self.costs)
        app.router.add_get("/alerts", self.alerts)

    async def profile(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        what = request.query.get("format", "report")
        insight = self._runner.insight
        if what == "snapshot":
            return self._reply(200, insight.snapshot())
        if what != "report":
            return self._error(400, f"format={what[:40]!r} is neither 'report' nor 'snapshot'.")
        return self._reply(200, insight.profile())

    async def costs(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            window = query_number(request, "window_s", 3600.0, 1.0, MAX_WINDOW_S)
        except BadRequest as exc:
            return self._error(exc.status, exc.message)
        until = time.time()
        since = until - window
        report = self._runner.insight.costs(since, until)
        if report is None:  # no LLM provider: nothing was spent
            report = build_cost_report([], [], since=since, until=until, source="worker (no [llm.*] provider)")
        return self._reply(200, report)

    async def alerts(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        monitor = self._runner.insight.alerts
        if monitor is None:
            return self._reply(
                200,
                {
                    "alerts": [],
                    "checks": 0,
                    "note": "No [monitoring.alerts] threshold is set, so nothing is checked (docs/observability.md).",
                },
            )
        cfg = monitor.config
        body = {
            "alerts": monitor.alerts(),
            "firing": sum(1 for a in monitor.alerts() if a.firing),
            "checks": monitor.checks,
            "interval_s": cfg.interval_s,
            "window_s": cfg.window_s,
            "clear_ratio": cfg.clear_ratio,
            "clear_after": cfg.clear_after,
        }
        return self._reply(200, body)
