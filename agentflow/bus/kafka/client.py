"""Connecting to the brokers: the options every client of the bus shares (TLS, SASL), and a connect loop that
backs off within ``connect_timeout_s`` and names a TLS failure as one, with its cause.

aiokafka reports any failed connection as "Unable to bootstrap"; :class:`Connector` repeats the TLS handshake
itself (before the first attempt and after a failed one) so a wrong CA or a plaintext listener is reported at
once instead of after the whole timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError  # type: ignore[import-untyped]
from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

from ...config import KafkaConfig
from ...errors import BusUnavailableError, ConfigError

__all__ = ["Connector", "client_options"]

logger = logging.getLogger("agentflow.bus.kafka")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


def _ssl_context(k: KafkaConfig) -> ssl.SSLContext:
    """The TLS context of ``ssl_cafile``/``ssl_certfile``/``ssl_keyfile``; a ConfigError naming the key and the
    file when one is missing or unreadable."""
    files = (
        ("kafka.ssl_cafile", k.ssl_cafile),
        ("kafka.ssl_certfile", k.ssl_certfile),
        ("kafka.ssl_keyfile", k.ssl_keyfile),
    )
    for key, path in files:
        if path and not os.path.isfile(path):
            empty = (
                "to use the system CAs" if key == "kafka.ssl_cafile" else "when the brokers want no client certificate"
            )
            raise ConfigError(
                f'{key} names {path!r}, which is not a file; point it at the PEM file, or set it to "" {empty}.',
                key=key,
            )
    if k.ssl_keyfile and not k.ssl_certfile:
        raise ConfigError(
            "kafka.ssl_keyfile is set but kafka.ssl_certfile is not; set both for mutual TLS, or neither.",
            key="kafka.ssl_certfile",
        )
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=k.ssl_cafile or None, certfile=k.ssl_certfile or None, keyfile=k.ssl_keyfile or None
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        try:  # which file: the CA bundle loads on its own, the certificate and key only together
            ssl.create_default_context(cafile=k.ssl_cafile or None)
            key, path = "kafka.ssl_certfile", f"{k.ssl_certfile} (key {k.ssl_keyfile or 'in the same file'})"
        except (ssl.SSLError, OSError, ValueError):
            key, path = "kafka.ssl_cafile", k.ssl_cafile
        raise ConfigError(
            f"{key}: could not load {path} as PEM ({exc}); check that it is the right file.", key=key
        ) from None
    return context


def client_options(k: KafkaConfig) -> dict[str, Any]:
    """Connection and security options shared by producer, consumers and admin client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": k.client_id,
        "request_timeout_ms": k.request_timeout_ms,
        "security_protocol": k.security_protocol,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = _ssl_context(k)
    if k.security_protocol.startswith("SASL"):
        password = os.environ.get(k.sasl_password_env) if k.sasl_password_env else None
        if not k.sasl_username or password is None:
            raise ConfigError(
                f"kafka.security_protocol is {k.security_protocol!r}: set kafka.sasl_username and name the "
                f"environment variable holding the password in kafka.sasl_password_env "
                f"({k.sasl_password_env or 'unset'}{' is not set' if k.sasl_password_env else ''}).",
                key="kafka.sasl_password_env",
            )
        opts.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username, sasl_plain_password=password)
    return opts


def _cause(exc: BaseException) -> str:
    """``KafkaConnectionError: Unable to bootstrap ...`` (aiokafka's own text often repeats the class name)."""
    if not isinstance(exc, KafkaError):
        return "no answer in time"
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}"


class Connector:
    """Connects the clients of one bus: ``client_opts`` for their constructors, :meth:`connect` for their start."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self.kafka = kafka
        self.client_opts = client_options(kafka)
        self._tls_checked = False

    async def connect(
        self, start: Callable[[], Awaitable[None]], what: str, attempt_timeout_s: float | None = None
    ) -> None:
        """Call ``start`` until it connects, backing off, for at most ``connect_timeout_s`` (each attempt at most
        ``attempt_timeout_s`` when given, and never past the deadline). A TLS failure is reported at once, with its
        cause. The first failure is logged as a warning, and again only when the cause changes: one line per state
        change, not one per retry."""
        k = self.kafka
        if not self._tls_checked:
            self._tls_checked = True
            await self._raise_on_tls_failure(what)  # before aiokafka's attempt, which waits out a stalled handshake
        deadline = time.monotonic() + k.connect_timeout_s
        backoff = 0.1
        attempts = 0
        logged: str | None = None
        while True:
            attempts += 1
            limit = deadline - time.monotonic()
            if attempt_timeout_s is not None:
                limit = min(limit, attempt_timeout_s)
            try:
                async with asyncio.timeout(max(limit, 0.05)):
                    await start()
                if logged is not None:
                    logger.warning("Kafka: %s at %s succeeded after %d attempts.", what, k.bootstrap_servers, attempts)
                return
            except (KafkaError, TimeoutError) as exc:
                cause = _cause(exc)
                if isinstance(exc, KafkaError) and not (exc.retriable or isinstance(exc, KafkaConnectionError)):
                    hint = (
                        " If the brokers lack the idempotent producer (some Kafka-compatible brokers do), set "
                        "kafka.enable_idempotence = false."
                        if k.enable_idempotence
                        else ""
                    )
                    raise BusUnavailableError(f"Could not {what} at {k.bootstrap_servers}: {cause}.{hint}") from None
                if not isinstance(exc, KafkaError) or isinstance(exc, KafkaConnectionError):
                    await self._raise_on_tls_failure(what)
                if time.monotonic() + backoff > deadline:
                    raise BusUnavailableError(
                        f"Could not {what} at {k.bootstrap_servers} within {k.connect_timeout_s:g} s "
                        f"(kafka.connect_timeout_s): {attempts} attempt(s) failed, the last with {cause}. Check "
                        "kafka.bootstrap_servers and that the brokers are up and reachable from here, or raise "
                        "kafka.connect_timeout_s."
                    ) from None
                if cause != logged:
                    logger.warning(
                        "Kafka: could not %s at %s (%s); retrying with back-off for up to %g s.",
                        what,
                        k.bootstrap_servers,
                        cause,
                        k.connect_timeout_s,
                    )
                    logged = cause
                else:
                    logger.debug(
                        "Kafka: %s: attempt %d failed (%s); retrying in %.1f s.", what, attempts, cause, backoff
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _raise_on_tls_failure(self, what: str) -> None:
        tls = await self._tls_failure()
        if tls is not None:
            raise BusUnavailableError(
                f"Could not {what} at {self.kafka.bootstrap_servers}: {tls}. Check kafka.ssl_cafile (the CA that "
                "signed the brokers' certificates), kafka.ssl_certfile and kafka.ssl_keyfile (when the brokers want a "
                "client certificate), and that this address is the brokers' TLS listener."
            )

    async def _tls_failure(self) -> str | None:
        """Why TLS fails with the bootstrap servers, or None when it is not a TLS problem (no TLS configured,
        servers down). aiokafka reports any failed connection as "Unable to bootstrap" and logs the cause only, so
        after a failed connect this repeats the handshake itself with the same context."""
        context = self.client_opts.get("ssl_context")
        if context is None:
            return None
        limit_s = min(5.0, self.kafka.request_timeout_ms / 1000)
        for server in self.kafka.bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            host = host.strip("[]")
            try:
                async with asyncio.timeout(limit_s):
                    _, writer = await asyncio.open_connection(host, int(port))
                await _close(writer)
            except (OSError, ValueError, TimeoutError):
                continue  # nothing listens there: not a TLS problem
            try:
                async with asyncio.timeout(limit_s):
                    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
            except ssl.SSLCertVerificationError as exc:
                return (
                    f"the TLS handshake with {host}:{port} failed: its certificate could not be verified "
                    f"({exc.verify_message})"
                )
            except ssl.SSLError as exc:
                return f"the TLS handshake with {host}:{port} failed ({exc.reason or exc})"
            except TimeoutError:
                return f"the TLS handshake with {host}:{port} did not complete within {limit_s:g} s"
            except OSError as exc:
                return f"the TLS handshake with {host}:{port} failed ({type(exc).__name__}: {exc})"
            await _close(writer)
        return None
