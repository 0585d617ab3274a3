"""The dead-letter routes of the HTTP service: ``GET /v1/dlq`` (a page of dead letters) and ``POST /v1/dlq/replay``
(replay them through ``runner.dlq``); behind the bearer token (:mod:`agentflow.service.auth`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from ..dlq import DEFAULT_PAGE, MAX_PAGE, DeadLetters, Order
from ..errors import BusError, LifecycleError
from .auth import BadRequest, BearerToken, JsonRoutes

if TYPE_CHECKING:
    from ..config import MonitoringConfig
    from ..runner import Runner

__all__ = ["DeadLetterRoutes", "ReplayRequest"]

_ORDERS: dict[str, Order] = {"oldest": "oldest", "newest": "newest"}


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/dlq/replay``: which dead letters to replay (all of them when nothing is given).

    ``ids`` are dead-letter ids (``id`` in ``GET /v1/dlq``), not event ids."""

    ids: list[str] | None = None
    topic: str | None = None
    agent: str | None = None


class DeadLetterRoutes(JsonRoutes):
    """``GET /v1/dlq`` and ``POST /v1/dlq/replay`` of one runner."""

    def __init__(self, runner: Runner, config: MonitoringConfig, token: BearerToken, refused: dict[int, int]) -> None:
        super().__init__(config, token, refused)
        self._runner = runner
        self._replay_dec = msgspec.json.Decoder(ReplayRequest)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/dlq", self.dlq_list)
        app.router.add_post("/v1/dlq/replay", self.dlq_replay)

    async def dlq_list(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        q = request.query
        raw_limit = q.get("limit", str(DEFAULT_PAGE))
        if not (
            raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 6 and 1 <= int(raw_limit) <= MAX_PAGE
        ):
            return self._error(400, f"limit={raw_limit!r} is not a whole number from 1 to {MAX_PAGE}.")
        raw_order = q.get("order")
        order: Order | None = None
        if raw_order is not None:
            if raw_order not in _ORDERS:
                return self._error(400, f"order={raw_order!r} is neither 'oldest' nor 'newest'.")
            order = _ORDERS[raw_order]
        cursor = q.get("cursor")
        if cursor is not None:
            try:
                DeadLetters.check_cursor(cursor, order)
            except ValueError as exc:
                return self._error(400, str(exc))
        try:
            page = await self._runner.dlq.page(
                topic=q.get("topic"),
                agent=q.get("agent"),
                limit=int(raw_limit),
                cursor=cursor,
                order=order,
            )
        except BusError as exc:
            return self._error(503, f"Could not read the dead-letter queue: {exc}", retry=True)
        body = {"dead_letters": page.dead_letters, "count": len(page.dead_letters), "next_cursor": page.next_cursor}
        return self._reply(200, body)

    async def dlq_replay(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            body = await self._body(request)
            req = self._replay_dec.decode(body) if body.strip() else ReplayRequest()
        except BadRequest as exc:
            return self._error(exc.status, exc.message)
        except msgspec.DecodeError as exc:
            return self._error(
                400,
                f'The body is not a replay request ({exc}); send {{"ids": [...]}}, {{"topic": ...}}, '
                '{"agent": ...} or nothing to replay every dead letter.',
            )
        try:
            n = await self._runner.dlq.replay(req.ids, topic=req.topic, agent=req.agent)
        except LifecycleError as exc:
            return self._error(503, str(exc), retry=True)
        except BusError as exc:
            return self._error(503, f"Could not replay the dead letters: {exc}", retry=True)
        return self._reply(200, {"replayed": n})
