"""What the tool layer makes of ``[tools.NAME]`` and ``[mcp.NAME]`` (the Structs are in :mod:`agentflow.config`):
secrets from ``*_env`` keys, and the breaker settings as the resilience layer's :class:`BreakerConfig`.

Secrets never sit in the file: in ``headers`` and ``env``, a key ending in ``_env`` names the environment
variable that holds the value of the key without that suffix::

    resolve_env_keys({"Authorization_env": "SEARCH_TOKEN"}, where="mcp.search.headers")
    # {"Authorization": "<the value of $SEARCH_TOKEN>"}
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from ..config import ToolBreakerConfig
from ..errors import ConfigError
from ..resilience.breaker import BreakerConfig

__all__ = ["breaker_config", "resolve_env_keys"]


def breaker_config(cfg: ToolBreakerConfig, *, where: str) -> BreakerConfig:
    """``cfg`` as the :class:`BreakerConfig` a :class:`CircuitBreaker` takes; raises :class:`ConfigError` naming
    ``where`` (say ``tools.search.breaker``) when the settings contradict each other."""
    try:
        return BreakerConfig(**msgspec.structs.asdict(cfg))
    except ValueError as exc:
        raise ConfigError(f"[{where}]: {exc}", key=where) from None


def resolve_env_keys(values: Mapping[str, str], env: Mapping[str, str] | None = None, *, where: str) -> dict[str, str]:
    """Return ``values`` with each ``NAME_env = "VAR"`` replaced by ``NAME = $VAR``.

    Raises :class:`ConfigError` naming ``where`` (say ``mcp.search.headers``) when a variable is not set. The
    resolved values are secrets: callers keep them out of reprs, logs and metrics.
    """
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    for key, value in values.items():
        if key.endswith("_env") and len(key) > 4:
            name = key[:-4]
            secret = env.get(value)
            if secret is None:
                raise ConfigError(
                    f"{where}.{key} names the environment variable {value!r}, which is not set; set it, or remove "
                    "the key.",
                    key=f"{where}.{key}",
                )
            out[name] = secret
        else:
            out[key] = value
    return out
