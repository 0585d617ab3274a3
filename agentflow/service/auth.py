"""What every JSON route of the HTTP service shares: the bearer-token rule, bounded request bodies, and replies.

Routes beyond the probes and ``/metrics`` (ingest, the dead-letter queue) need ``Authorization: Bearer <token>``
when the environment variable named by ``[monitoring] token_env`` is set; a server bound beyond loopback refuses
to start without one (:class:`BearerToken`).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import MonitoringConfig

__all__ = ["BadRequest", "BearerToken", "JsonRoutes", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything reachable from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: assume it resolves beyond loopback


class BadRequest(Exception):
    """A request the route refuses: its status and the sentence the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BearerToken:
    """The service's bearer token, read from the environment variable ``[monitoring] token_env``.

    ``what`` names the feature that needs it and ``switch`` the key that turns it off, for the error when the
    server binds beyond loopback without a token. With ``refuse_start=False`` (routes that are on by default)
    the server starts anyway and those routes answer 403 until a token is set (``locked``).
    """

    def __init__(self, config: MonitoringConfig, what: str, switch: str, *, refuse_start: bool = True) -> None:
        token = os.environ.get(config.token_env, "")
        self._token = token.encode() if token else None
        self.what = what
        self.token_env = config.token_env
        #: Beyond loopback without a token: every request is refused (403).
        self.locked = self._token is None and not is_loopback(config.host)
        if self.locked and refuse_start:
            raise ConfigError(
                f"{what} is enabled on {config.host}, beyond loopback, but the environment variable "
                f"{config.token_env} (monitoring.token_env) holding its bearer token is not set. Set it to a "
                f"secret, bind monitoring.host to 127.0.0.1, or disable {switch}.",
                key="monitoring.token_env",
            )

    def allows(self, request: web.Request) -> bool:
        if self.locked:
            return False
        if self._token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)


class JsonRoutes:
    """Base of the token-protected JSON routes: replies, errors with ``Retry-After``, bounded bodies."""

    def __init__(self, config: MonitoringConfig, token: BearerToken, refused: dict[int, int]) -> None:
        self._config = config
        self._token = token
        self._enc = msgspec.json.Encoder()
        #: Refused requests by HTTP status, shared by the routes of one server.
        self.refused = refused

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        if status >= 400:
            self.refused[status] = self.refused.get(status, 0) + 1
        return web.Response(
            status=status, body=self._enc.encode(body), content_type="application/json", headers=headers
        )

    def _error(self, status: int, message: str, *, retry: bool = False) -> web.Response:
        headers = {"Retry-After": str(self._config.retry_after_s)} if retry else None
        if status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="agentflow"'}
        return self._reply(status, {"error": message}, headers)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        """The 401 answer when the request lacks the token (403 when no token is set beyond loopback), else None."""
        if self._token.allows(request):
            return None
        if self._token.locked:
            return self._error(
                403,
                f"{self._token.what} are served beyond loopback only with a bearer token: set the environment "
                f"variable {self._token.token_env} (monitoring.token_env) on the worker and send Authorization: "
                "Bearer <token>.",
            )
        return self._error(401, "A valid bearer token is required: send Authorization: Bearer <token>.")

    async def _body(self, request: web.Request) -> bytes:
        limit = self._config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(
                413,
                f"The request body is {request.content_length} bytes, over the limit of {limit}; send fewer "
                "events per request or raise monitoring.max_body_bytes.",
            )
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(
                413,
                f"The request body is over the limit of {limit} bytes; send fewer events per request or raise "
                "monitoring.max_body_bytes.",
            ) from None
