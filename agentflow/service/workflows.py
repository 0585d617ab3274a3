"""The workflow route of the HTTP service: ``GET /v1/workflows/{run_id}``, a run's status (docs/workflows.md),
behind the bearer token of :mod:`agentflow.service.auth` like ingest and the dead-letter routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..errors import StateError
from .auth import BearerToken, JsonRoutes

if TYPE_CHECKING:
    from ..config import MonitoringConfig
    from ..runner import Runner

__all__ = ["WorkflowRoutes"]

#: Longest run id the route looks up (ids agentflow makes are far shorter; a given run_id may be longer).
MAX_RUN_ID_CHARS = 512


class WorkflowRoutes(JsonRoutes):
    """``GET /v1/workflows/{run_id}`` of one runner: 200 with the status, 404 for an unknown run."""

    def __init__(self, runner: Runner, config: MonitoringConfig, token: BearerToken, refused: dict[int, int]) -> None:
        super().__init__(config, token, refused)
        self._runner = runner

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/workflows/{run_id}", self.run_status)

    async def run_status(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        run_id = request.match_info["run_id"]
        if len(run_id) > MAX_RUN_ID_CHARS:
            return self._error(400, f"A run id has at most {MAX_RUN_ID_CHARS} characters.")
        try:
            status = await self._runner.workflows.status(run_id)
        except StateError as exc:
            return self._error(503, f"Could not read the run's status from the state store: {exc}", retry=True)
        if status is None:
            return self._error(
                404, f"No workflow run {run_id!r} is known: it was never started, or its records have expired."
            )
        return self._reply(200, status)
