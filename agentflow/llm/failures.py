"""How a provider's failures become :class:`~agentflow.errors.LLMError`s: HTTP statuses, aiohttp's and the OS's
exceptions, oversized answers. Every message that quotes the provider is scrubbed of secrets first
(:func:`agentflow.scrub.scrub_secrets`), because it goes on to logs, dead letters and headers.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import msgspec

from ..config import LLMConfig
from ..errors import (
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMRateLimitedError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from ..http1 import ConnectFailed, ProtocolError
from ..scrub import scrub_secrets
from .types import ERROR_DECODER

__all__ = ["MAX_ERROR_DETAIL_CHARS", "SCRUB_WINDOW_CHARS", "Failures", "outcome", "retry_after_s"]

#: How much of a provider's error body goes into an exception message, and how much of it is scrubbed of
#: secrets first (all of it up to this size, so a cut never leaves the head of a key behind).
MAX_ERROR_DETAIL_CHARS = 300
SCRUB_WINDOW_CHARS = 65_536


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: rare from LLM providers, and the backoff still applies


def outcome(exc: LLMError) -> str:
    """The ``outcome`` label of a failed call."""
    if isinstance(exc, LLMTimeoutError):
        return "timeout"
    if isinstance(exc, LLMRateLimitedError):
        return "rate_limited"
    if isinstance(exc, LLMUnavailableError):
        return "unavailable"
    if isinstance(exc, LLMAuthError):
        return "auth"
    if isinstance(exc, LLMBadRequestError):
        return "bad_request"
    return "error"


class Failures:
    """The error translation of one provider: its name and config, and the secrets to scrub (set at start)."""

    __slots__ = ("_base", "config", "name", "secrets")

    def __init__(self, name: str, config: LLMConfig) -> None:
        self.name = name
        self.config = config
        self._base = config.base_url.rstrip("/")
        self.secrets: tuple[str, ...] = ()

    def scrub(self, text: str) -> str:
        return scrub_secrets(text, self.secrets)

    def http_error(self, status: int, raw: bytes, headers: Mapping[str, str], model: str) -> LLMError:
        try:
            detail = ERROR_DECODER.decode(raw).message
        except (msgspec.DecodeError, msgspec.ValidationError):
            detail = raw[:SCRUB_WINDOW_CHARS].decode("utf-8", "replace")
        # Providers may echo the request's credentials; the message goes on to logs, dead letters and headers.
        detail = self.scrub(detail[:SCRUB_WINDOW_CHARS])[:MAX_ERROR_DETAIL_CHARS]
        who = f"LLM provider {self.name!r} (model {model!r})"
        if status == 429:
            after = retry_after_s(headers)
            wait = f"; it asked to wait {after:g} s" if after is not None else ""
            return LLMRateLimitedError(
                f"{who} is rate-limiting this client (429: {detail}){wait}. Lower [llm.{self.name}.limits] rpm/tpm "
                "or ask the provider for a higher quota.",
                provider=self.name,
                model=model,
                retry_after_s=after,
            )
        if status in (401, 403):
            env = self.config.api_key_env
            fix = (
                f"check the key in the environment variable {env}"
                if env
                else "set api_key_env to the variable holding the key"
            )
            return LLMAuthError(
                f"{who} refused the credentials ({status}: {detail}); {fix}.",
                provider=self.name,
                model=model,
                status=status,
            )
        if status == 408:
            return LLMTimeoutError(
                f"{who} timed out the request (408: {detail}).", provider=self.name, model=model, status=status
            )
        if status >= 500:
            return LLMUnavailableError(
                f"{who} failed ({status}: {detail}); it was retried if attempts and the deadline allowed.",
                provider=self.name,
                model=model,
                status=status,
            )
        return LLMBadRequestError(
            f"{who} rejected the request ({status}: {detail}); fix the request — retrying would not help.",
            provider=self.name,
            model=model,
            status=status,
        )

    def translate(self, exc: BaseException, model: str, remaining_s: float) -> LLMError | None:
        """aiohttp's and the OS's exceptions as LLMErrors; None for what must propagate (cancellation)."""
        if isinstance(exc, TimeoutError):
            return LLMTimeoutError(
                f"LLM provider {self.name!r} did not answer within "
                f"{min(self.config.request_timeout_s, remaining_s):.3g} s; raise request_timeout_s, or check the "
                "provider's status.",
                provider=self.name,
                model=model,
            )
        if isinstance(exc, aiohttp.ClientConnectorError | ConnectFailed):
            return LLMUnavailableError(
                self.scrub(
                    f"Cannot connect to LLM provider {self.name!r} at {self._base} ({exc.os_error}); check "
                    "base_url and that the server is running."
                ),
                provider=self.name,
                model=model,
            )
        if isinstance(exc, aiohttp.ClientError | ConnectionError | ProtocolError):
            return LLMUnavailableError(
                self.scrub(
                    f"The connection to LLM provider {self.name!r} failed mid-request ({type(exc).__name__}: "
                    f"{exc}); it was retried if attempts and the deadline allowed."
                ),
                provider=self.name,
                model=model,
            )
        return None

    def too_large(self, model: str, limit: int) -> LLMBadRequestError:
        return LLMBadRequestError(
            f"The answer from LLM provider {self.name!r} is larger than max_response_bytes ({limit}); raise it or "
            "ask for less (max_tokens, fewer inputs).",
            provider=self.name,
            model=model,
        )

    def not_openai(self, exc: Exception, model: str) -> LLMBadRequestError:
        return LLMBadRequestError(
            f"LLM provider {self.name!r} answered with a body that is not a valid OpenAI-compatible "
            f"response ({exc}); check base_url.",
            provider=self.name,
            model=model,
        )
